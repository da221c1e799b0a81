//! `vcycle verify`: two checkpoints on the same seeded input; `--max-rel` makes it a check.

use crate::util::{Sandbox, assert_mentions, fixture};

fn relative(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("relative:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no relative line in {stdout}"))
}

#[test]
fn verify_passes_exact_growth_and_fails_the_reference_rule_on_gpt2() {
    let sb = Sandbox::new();
    let gpt2 = fixture("gpt2-tiny");
    for rule in ["exact", "reference"] {
        let small = format!("small-{rule}");
        let wide = format!("wide-{rule}");
        sb.ok([
            "coalesce",
            &gpt2,
            "--heads",
            "2",
            "--embedding-rule",
            rule,
            "-o",
            &small,
        ]);
        sb.ok([
            "decoalesce",
            &small,
            "--heads",
            "4",
            "--embedding-rule",
            rule,
            "-o",
            &wide,
        ]);
    }
    let exact = sb.ok(["verify", "small-exact", "wide-exact", "--max-rel", "1e-5"]);
    for field in [
        "input:",
        "mean |a|:",
        "mean |a - b|:",
        "max |a - b|:",
        "relative:",
    ] {
        assert!(exact.stdout.contains(field), "{exact}");
    }
    assert!(relative(&exact.stdout) <= 1e-5, "{exact}");

    let reference = sb.run([
        "verify",
        "small-reference",
        "wide-reference",
        "--max-rel",
        "1e-3",
    ]);
    assert_eq!(reference.code, 1, "{reference}");
    assert!(relative(&reference.stdout) > 1e-3, "{reference}");
    assert!(
        reference.stderr.contains("exceeds --max-rel"),
        "{reference}"
    );

    // Without --max-rel it only reports.
    let report = sb.run(["verify", "small-reference", "wide-reference"]);
    assert_eq!(report.code, 0, "{report}");
}

#[test]
fn verify_is_deterministic_per_seed() {
    let sb = Sandbox::new();
    let gpt2 = fixture("gpt2-tiny");
    sb.ok(["coalesce", &gpt2, "--layers", "2", "-o", "shallow"]);
    let a = sb.ok([
        "verify", &gpt2, "shallow", "--seed", "5", "--batch", "3", "--seq", "8",
    ]);
    let b = sb.ok([
        "verify", &gpt2, "shallow", "--seed", "5", "--batch", "3", "--seq", "8",
    ]);
    let c = sb.ok([
        "verify", &gpt2, "shallow", "--seed", "6", "--batch", "3", "--seq", "8",
    ]);
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
    assert!(a.stdout.contains("3 x 8"), "{a}");
}

#[test]
fn verify_refuses_models_with_different_vocabularies() {
    let sb = Sandbox::new();
    let run = sb.run(["verify", &fixture("gpt2-tiny"), &fixture("vit-tiny")]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(
        &run,
        &[
            "vit-tiny",
            "gpt2-tiny",
            "3-channel",
            "tokens of a 128-token vocabulary",
        ],
    );
}
