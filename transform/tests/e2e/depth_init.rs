//! `--depth-init zero`: depth growth that `vcycle verify` confirms keeps a pre-LN model's
//! function; post-LN models are refused with exit code 2.

use crate::util::{Sandbox, assert_mentions, assert_nothing_written, fixture};

#[test]
fn zero_depth_init_passes_verify_on_pre_ln_fixtures() {
    for name in ["gpt2-tiny", "llama-tiny", "vit-tiny"] {
        let sb = Sandbox::new();
        sb.ok([
            "decoalesce",
            &fixture(name),
            "--layers",
            "8",
            "--depth-init",
            "zero",
            "-o",
            "deep",
        ]);
        let run = sb.ok(["verify", &fixture(name), "deep", "--max-rel", "1e-6"]);
        println!("{name}: {}", run.stdout.trim().replace('\n', "; "));

        // The paper's copies stack the layers: the same check fails.
        sb.ok([
            "decoalesce",
            &fixture(name),
            "--layers",
            "8",
            "-o",
            "copied",
        ]);
        let copied = sb.run(["verify", &fixture(name), "copied", "--max-rel", "1e-2"]);
        assert_eq!(copied.code, 1, "{copied}");
    }
}

#[test]
fn zero_depth_init_grows_through_grow_too() {
    // grow with alpha = 1 is the de-coalesced model: the small model's function.
    let sb = Sandbox::new();
    let gpt2 = fixture("gpt2-tiny");
    sb.ok([
        "coalesce", &gpt2, "--layers", "2", "--heads", "2", "-o", "small",
    ]);
    let plan = sb.ok([
        "grow",
        "small",
        "--large",
        &gpt2,
        "--alpha",
        "1",
        "--depth-init",
        "zero",
        "--dry-run",
    ]);
    assert!(plan.stdout.contains("depth init: zero"), "{plan}");
    assert!(plan.stdout.contains("<- zeros (added layer"), "{plan}");
    sb.ok([
        "grow",
        "small",
        "--large",
        &gpt2,
        "--alpha",
        "1",
        "--depth-init",
        "zero",
        "-o",
        "grown",
    ]);
    sb.ok(["verify", "small", "grown", "--max-rel", "1e-6"]);
}

#[test]
fn zero_depth_init_refuses_post_ln_bert() {
    let sb = Sandbox::new();
    let run = sb.run([
        "decoalesce",
        &fixture("bert-tiny"),
        "--layers",
        "8",
        "--depth-init",
        "zero",
        "-o",
        "deep",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(
        &run,
        &[
            "zero-initialised depth growth",
            "--depth-init zero",
            "`bert`",
            "post-LN",
        ],
    );
    assert_nothing_written(&sb.path("deep"));
}
