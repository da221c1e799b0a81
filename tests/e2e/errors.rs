//! Every error case: exit code 2, a message naming the cause, and nothing written.

use std::path::Path;

use safetensors::Dtype;
use serde_json::json;

use crate::util::{
    FIXTURES, Run, Sandbox, Tensor, assert_mentions, assert_nothing_written, assert_tensors_eq,
    entries, fixture, fixtures_dir, load, read_json, save, write_json,
};

/// Runs `args` in the sandbox and requires exit code 2, every needle in stderr, and no
/// trace of `output` (relative to the sandbox).
fn refuses(sb: &Sandbox, args: &[&str], output: &str, needles: &[&str]) -> Run {
    let run = sb.run(args);
    assert_eq!(run.code, 2, "expected exit code 2:\n{run}");
    assert_mentions(&run, needles);
    assert!(
        run.stdout.is_empty(),
        "an error prints nothing on stdout:\n{run}"
    );
    assert_nothing_written(&sb.path(output));
    run
}

#[test]
fn heads_that_do_not_divide_are_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    refuses(
        &sb,
        &["coalesce", input, "--heads", "3", "-o", "out"],
        "out",
        &["head", "4", "3", "do not divide"],
    );
    refuses(
        &sb,
        &["decoalesce", input, "--heads", "6", "-o", "out"],
        "out",
        &["head", "6", "4", "do not divide"],
    );
    refuses(
        &sb,
        &["coalesce", input, "--layers", "3", "-o", "out"],
        "out",
        &["layer", "do not divide"],
    );
    refuses(
        &sb,
        &["coalesce", input, "--heads", "8", "-o", "out"],
        "out",
        &["head", "8"],
    );
}

#[test]
fn explicit_groups_must_cover_every_unit_once_and_in_range() {
    let sb = Sandbox::new();
    let input = fixture("bert-tiny");
    let input = input.as_str();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[2]]"],
            &["width scheme (head groups)", "unit 3 is in no group"],
        ),
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[1,2,3]]"],
            &[
                "width scheme (head groups)",
                "unit 1 appears more than once",
            ],
        ),
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[2,7]]"],
            &["width scheme (head groups)", "unit 7", "out of range"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0,1],[2,9]]"],
            &["depth scheme (layer groups)", "unit 9", "out of range"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0],[1],[2,3]]"],
            &["depth scheme (layer groups)", "3 groups"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0,1,2],[]]"],
            &["depth scheme (layer groups)", "group 1 is empty"],
        ),
    ];
    for (options, needles) in cases {
        let mut args = vec!["coalesce", input, "-o", "out"];
        args.extend_from_slice(options);
        refuses(&sb, &args, "out", needles);
    }
    // De-coalescing validates the same way (groups of the large model's 8 units).
    refuses(
        &sb,
        &[
            "decoalesce",
            input,
            "--heads",
            "8",
            "--width-scheme",
            "[[0,1],[2,3],[4,5],[6]]",
            "-o",
            "out",
        ],
        "out",
        &["width scheme (head groups)", "unit 7 is in no group"],
    );
}

#[test]
fn scheme_text_that_does_not_parse_is_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--heads",
            "2",
            "--width-scheme",
            "diagonal",
            "-o",
            "out",
        ],
        "out",
        &["--width-scheme", "diagonal"],
    );
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--layers",
            "2",
            "--depth-scheme",
            "[[0,1],[2,3",
            "-o",
            "out",
        ],
        "out",
        &["--depth-scheme", "[[0,1],[2,3"],
    );
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--heads",
            "2",
            "--width-scheme",
            "[[0,-1],[2,3]]",
            "-o",
            "out",
        ],
        "out",
        &["--width-scheme"],
    );
}

#[test]
fn an_existing_output_needs_force_and_force_replaces_it() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    std::fs::create_dir(sb.path("out")).expect("a directory can be created");
    std::fs::write(sb.path("out/marker"), "keep me").expect("a file can be written");
    let run = sb.run(["coalesce", input, "--heads", "2", "-o", "out"]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["out", "already exists", "--force"]);
    assert_eq!(
        entries(&sb.path("out")),
        ["marker"],
        "the existing output is untouched"
    );
    assert_eq!(sb.entries(), ["out"], "no temporary left behind");

    sb.ok(["coalesce", input, "--heads", "2", "-o", "out", "--force"]);
    assert_eq!(
        entries(&sb.path("out")),
        ["config.json", "model.safetensors"],
        "--force replaces the directory"
    );
    assert_eq!(
        load(&sb.path("out"))["transformer.wte.weight"].shape,
        [128, 32]
    );
    assert_eq!(sb.entries(), ["out"], "no temporary left behind by --force");

    // The same for a file output.
    std::fs::rename(
        sb.path("out/model.safetensors"),
        sb.path("small.safetensors"),
    )
    .expect("the model file can be moved");
    std::fs::write(sb.path("file.safetensors"), "not a model").expect("a file can be written");
    let args = [
        "decoalesce",
        "small.safetensors",
        "--heads",
        "4",
        "-o",
        "file.safetensors",
    ];
    let run = sb.run(args);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["file.safetensors", "already exists"]);
    assert_eq!(
        std::fs::read_to_string(sb.path("file.safetensors")).ok(),
        Some("not a model".to_string())
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    sb.ok(forced);
    assert_eq!(
        load(&sb.path("file.safetensors"))["transformer.wte.weight"].shape,
        [128, 64]
    );
    assert!(
        !sb.entries().iter().any(|e| e.starts_with(".vcycle-")),
        "no temporary left behind: {:?}",
        sb.entries()
    );
}

/// Asserts a copied fixture directory still holds exactly the fixture's files.
fn assert_intact(copy: &Path, name: &str) {
    let fixture_dir = fixtures_dir().join(name);
    assert_eq!(
        entries(copy),
        entries(&fixture_dir),
        "files of {}",
        copy.display()
    );
    for file in entries(&fixture_dir) {
        assert!(
            std::fs::read(copy.join(&file)).ok() == std::fs::read(fixture_dir.join(&file)).ok(),
            "{file} of the input was modified"
        );
    }
}

#[test]
fn output_equal_to_or_inside_or_around_the_input_is_refused() {
    let sb = Sandbox::new();
    sb.copy_fixture("gpt2-tiny", "in");
    for force in [false, true] {
        let mut args = vec!["coalesce", "in", "--heads", "2", "-o", "in"];
        if force {
            args.push("--force");
        }
        let run = sb.run(&args);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &["output in", "is the input"]);
        assert_intact(&sb.path("in"), "gpt2-tiny");

        args[5] = "in/small";
        refuses(&sb, &args, "in/small", &["in/small", "inside the input"]);
        assert_intact(&sb.path("in"), "gpt2-tiny");

        // The sandbox directory contains the input: replacing it would delete the input.
        let root = sb
            .root()
            .to_str()
            .expect("temporary paths are UTF-8")
            .to_string();
        args[5] = &root;
        let run = sb.run(&args);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &["contains the input"]);
        assert_intact(&sb.path("in"), "gpt2-tiny");
    }
    assert_eq!(sb.entries(), ["in"]);

    // A symlink to the input is the input.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("in", sb.path("link")).expect("a symlink can be created");
        let run = sb.run(["coalesce", "in", "--heads", "2", "-o", "link", "--force"]);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &["is the input"]);
        assert_intact(&sb.path("in"), "gpt2-tiny");
        std::fs::remove_file(sb.path("link")).expect("the symlink can be removed");
    }

    // grow must not write over the saved large model it reads.
    sb.ok(["coalesce", "in", "--heads", "2", "-o", "small"]);
    let run = sb.run([
        "grow", "small", "--large", "in", "--alpha", "0.5", "-o", "in", "--force",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["is the input"]);
    assert_intact(&sb.path("in"), "gpt2-tiny");

    // A file input given as its own output, also through another spelling of the path.
    sb.ok(["decoalesce", "in", "--heads", "8", "-o", "large"]);
    let before = std::fs::read(sb.path("large/model.safetensors")).expect("the file exists");
    for output in [
        "large/model.safetensors",
        "large/../large/model.safetensors",
    ] {
        let run = sb.run([
            "coalesce",
            "large/model.safetensors",
            "--heads",
            "4",
            "-o",
            output,
            "--force",
        ]);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &["is the input"]);
        assert!(
            std::fs::read(sb.path("large/model.safetensors")).ok() == Some(before.clone()),
            "the input file was modified"
        );
    }
    assert_eq!(
        entries(&sb.path("large")),
        ["config.json", "model.safetensors"]
    );
}

/// Copies a fixture to `in` with its tensors changed by `edit`.
fn edited_copy(sb: &Sandbox, name: &str, edit: impl FnOnce(&mut crate::util::Tensors)) {
    let dir = sb.copy_fixture(name, "in");
    let mut tensors = load(&dir);
    edit(&mut tensors);
    save(&dir.join("model.safetensors"), &tensors, None);
}

#[test]
fn an_unclaimed_tensor_is_named() {
    let extras = [
        ("gpt2-tiny", "transformer.h.1.attn.rotary_scale"),
        ("bert-tiny", "bert.encoder.layer.2.adapter.weight"),
    ];
    for (name, extra) in extras {
        let sb = Sandbox::new();
        edited_copy(&sb, name, |t| {
            t.insert(
                extra.to_string(),
                Tensor {
                    dtype: Dtype::F32,
                    shape: vec![4],
                    data: vec![0; 16],
                },
            );
        });
        refuses(
            &sb,
            &["coalesce", "in", "--heads", "2", "-o", "out"],
            "out",
            &[extra, "not claimed", "model.safetensors"],
        );
        // inspect lists it instead of failing.
        let run = sb.ok(["inspect", "in"]);
        assert!(
            run.stdout.contains(&format!("  {extra}\n")),
            "inspect lists the unplaced tensor:\n{run}"
        );
    }
}

#[test]
fn a_missing_required_tensor_is_named() {
    let cases = [
        ("gpt2-tiny", "transformer.h.2.mlp.c_fc.weight"),
        ("gpt2-tiny", "transformer.ln_f.weight"),
        ("bert-tiny", "bert.encoder.layer.0.attention.self.key.bias"),
        ("bert-tiny", "bert.embeddings.LayerNorm.weight"),
    ];
    for (name, removed) in cases {
        let sb = Sandbox::new();
        edited_copy(&sb, name, |t| {
            assert!(t.remove(removed).is_some(), "{name} has {removed}");
        });
        refuses(
            &sb,
            &["decoalesce", "in", "--heads", "8", "-o", "out"],
            "out",
            &[removed, "missing"],
        );
    }
}

#[test]
fn alpha_outside_zero_one_is_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    sb.ok(["coalesce", input, "--heads", "2", "-o", "small"]);
    sb.ok(["decoalesce", "small", "--heads", "4", "-o", "other"]);
    for alpha in ["1.5", "-0.5", "NaN"] {
        let alpha_arg = format!("--alpha={alpha}");
        refuses(
            &sb,
            &["interpolate", input, "other", &alpha_arg, "-o", "out"],
            "out",
            &["alpha", alpha],
        );
        refuses(
            &sb,
            &["grow", "small", "--large", input, &alpha_arg, "-o", "out"],
            "out",
            &["alpha", alpha],
        );
    }
}

#[test]
fn interpolating_checkpoints_of_different_shapes_is_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    // Same tensor names, half the width.
    sb.ok(["coalesce", input, "--heads", "2", "-o", "narrow"]);
    refuses(
        &sb,
        &[
            "interpolate",
            input,
            "narrow",
            "--alpha",
            "0.5",
            "-o",
            "out",
        ],
        "out",
        &[
            "transformer.h.0.attn.c_attn.bias",
            "[192]",
            "[96]",
            "narrow",
        ],
    );
    // More layers: names the other model has and LARGE lacks.
    sb.ok(["decoalesce", input, "--layers", "8", "-o", "deep"]);
    refuses(
        &sb,
        &["interpolate", input, "deep", "--alpha", "0.5", "-o", "out"],
        "out",
        &["transformer.h.4.", "deep"],
    );
    // grow with a saved large model that de-coalescing cannot produce.
    let bert = fixture("bert-tiny");
    refuses(
        &sb,
        &[
            "grow",
            "narrow",
            "--large",
            bert.as_str(),
            "--alpha",
            "0.5",
            "-o",
            "out",
        ],
        "out",
        &["bert.", "large model"],
    );
}

#[test]
fn a_config_that_disagrees_with_the_tensors_is_refused() {
    let cases: [(&str, &str, serde_json::Value, &[&str]); 4] = [
        ("gpt2-tiny", "n_embd", json!(32), &["n_embd", "32", "64"]),
        ("gpt2-tiny", "n_layer", json!(6), &["n_layer", "6", "4"]),
        (
            "bert-tiny",
            "intermediate_size",
            json!(512),
            &["intermediate_size", "512", "256"],
        ),
        ("bert-tiny", "num_attention_heads", json!(3), &["3 heads"]),
    ];
    for (name, key, value, needles) in cases {
        let sb = Sandbox::new();
        let dir = sb.copy_fixture(name, "in");
        let mut config = read_json(&dir.join("config.json"));
        config[key] = value;
        write_json(&dir.join("config.json"), &config);
        let mut needles = needles.to_vec();
        needles.push("config.json");
        refuses(
            &sb,
            &["coalesce", "in", "--heads", "2", "-o", "out"],
            "out",
            &needles,
        );
    }
}

#[test]
fn a_nonexistent_input_is_named() {
    let sb = Sandbox::new();
    refuses(
        &sb,
        &["coalesce", "no-such-model", "--heads", "2", "-o", "out"],
        "out",
        &["no-such-model", "No such file or directory"],
    );
    refuses(
        &sb,
        &[
            "grow",
            "no-such-small",
            "--large",
            "no-such-large",
            "--alpha",
            "0.5",
            "-o",
            "out",
        ],
        "out",
        &["no-such-"],
    );
}

#[test]
fn an_unknown_architecture_is_named() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    refuses(
        &sb,
        &[
            "coalesce",
            input.as_str(),
            "--arch",
            "nosuch",
            "--heads",
            "2",
            "-o",
            "out",
        ],
        "out",
        &["nosuch", "bert", "gpt2"],
    );
    // The wrong built-in architecture: the message should say that the checkpoint is not a
    // `bert` one and name a tensor the rules cannot claim; it must not blame a missing
    // config.json when the input has one.
    refuses(
        &sb,
        &[
            "coalesce",
            input.as_str(),
            "--arch",
            "bert",
            "--heads",
            "2",
            "-o",
            "out",
        ],
        "out",
        &["bert", "transformer."],
    );
}

#[test]
fn a_truncated_safetensors_file_is_named() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let dir = sb.copy_fixture(name, "in");
        let file = dir.join("model.safetensors");
        let bytes = std::fs::read(&file).expect("the copy can be read");
        for keep in [bytes.len() / 2, 100, 4] {
            std::fs::write(&file, &bytes[..keep]).expect("the copy can be truncated");
            refuses(
                &sb,
                &["coalesce", "in", "--heads", "2", "-o", "out"],
                "out",
                &["model.safetensors"],
            );
        }
        // A truncated bare file, too.
        std::fs::write(sb.path("bare.safetensors"), &bytes[..bytes.len() - 1])
            .expect("a file can be written");
        refuses(
            &sb,
            &[
                "coalesce",
                "bare.safetensors",
                "--heads",
                "2",
                "-o",
                "out.safetensors",
            ],
            "out.safetensors",
            &["bare.safetensors", "safetensors"],
        );
    }
}

#[test]
fn failures_after_a_good_run_leave_the_good_output_alone() {
    // A refused conversion aimed at an existing good output must not damage it.
    let sb = Sandbox::new();
    let input = fixture("bert-tiny");
    sb.ok(["coalesce", input.as_str(), "--heads", "2", "-o", "out"]);
    let before = load(&sb.path("out"));
    let run = sb.run([
        "coalesce",
        input.as_str(),
        "--heads",
        "3",
        "-o",
        "out",
        "--force",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert_tensors_eq(
        &load(&sb.path("out")),
        &before,
        "output after a failed --force",
    );
    assert_eq!(sb.entries(), ["out"]);
}

/// The last two `: `-separated parts of the message's first line (thiserror's `{source}`
/// printed once by the error itself and again by the error chain shows up as `X: X`).
fn repeated_cause(run: &Run) -> Option<String> {
    let line = run.stderr.lines().next().unwrap_or_default();
    let parts: Vec<&str> = line.split(": ").collect();
    parts
        .windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| w[0].to_string())
}

#[test]
fn error_causes_are_said_once() {
    let sb = Sandbox::new();
    let dir = sb.copy_fixture("gpt2-tiny", "in");
    std::fs::write(dir.join("model.safetensors"), [1, 0, 0]).expect("a file can be written");
    sb.copy_fixture("gpt2-tiny", "bad-config");
    std::fs::write(sb.path("bad-config/config.json"), "{bad").expect("a file can be written");
    let cases: [(&[&str], &str); 3] = [
        (&["inspect", "no-such-model"], "no-such-model"),
        (&["inspect", "in"], "model.safetensors"),
        (&["inspect", "bad-config"], "config.json"),
    ];
    for (args, needle) in cases {
        let run = sb.run(args);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &[needle]);
        assert_eq!(repeated_cause(&run), None, "the cause is repeated:\n{run}");
    }
}

#[test]
fn force_replaces_an_existing_file_with_a_directory_output() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    std::fs::write(sb.path("out"), "an old file").expect("a file can be written");
    sb.ok([
        "coalesce",
        input.as_str(),
        "--heads",
        "2",
        "-o",
        "out",
        "--force",
    ]);
    assert_eq!(
        entries(&sb.path("out")),
        ["config.json", "model.safetensors"]
    );
    assert_eq!(sb.entries(), ["out"]);
}
