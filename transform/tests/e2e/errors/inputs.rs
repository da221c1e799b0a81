//! Refused inputs: unclaimed or missing tensors, checkpoints to interpolate that do not match,
//! a config.json that disagrees with the tensors, missing and truncated files; the cause said
//! once.

use safetensors::Dtype;
use serde_json::json;

use super::refuses;
use crate::util::{
    FIXTURES, Run, Sandbox, Tensor, assert_mentions, fixture, load, read_json, save, write_json,
};

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

/// A file vcycle reads whole (config, index, rules) beyond its bound is refused before it is
/// read: a 3 GB sparse one costs neither the memory nor the time.
#[test]
fn a_small_file_beyond_its_bound_is_refused_unread() {
    let huge = |path: &std::path::Path| {
        std::fs::File::create(path)
            .unwrap()
            .set_len(3 << 30)
            .unwrap();
    };
    let cases: [(&str, &[&str]); 3] = [
        (
            "in/config.json",
            &["coalesce", "in", "--heads", "2", "-o", "out"],
        ),
        (
            "in/model.safetensors.index.json",
            &["coalesce", "in", "--heads", "2", "-o", "out"],
        ),
        (
            "rules.toml",
            &[
                "coalesce",
                "in",
                "--rules",
                "rules.toml",
                "--heads",
                "2",
                "-o",
                "out",
            ],
        ),
    ];
    for (file, args) in cases {
        let sb = Sandbox::new();
        sb.copy_fixture("gpt2-tiny", "in");
        huge(&sb.path(file));
        let started = std::time::Instant::now();
        let run = sb.run(args);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &[file.rsplit('/').next().unwrap(), "larger than"]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{file}"
        );
        assert!(!sb.path("out").exists());
    }
}

/// Checking a rule file is linear in its rules: 100,000 `tied_to` rules (quadratic checking
/// took 12.5 s in a release build) are read in seconds.
#[test]
fn many_tied_rules_are_checked_in_linear_time() {
    let sb = Sandbox::new();
    let mut rules =
        std::fs::read_to_string(crate::util::fixtures_dir().join("../transform/rules/gpt2.toml"))
            .unwrap();
    for i in 0..100_000 {
        rules.push_str(&format!(
            "\n[[tensors]]\nname = \"tied{i}.weight\"\naxes = [\"vocab\", \"hidden:out\"]\n\
             optional = true\ntied_to = \"wte.weight\"\n"
        ));
    }
    std::fs::write(sb.path("rules.toml"), rules).unwrap();
    let started = std::time::Instant::now();
    sb.ok(["inspect", &fixture("gpt2-tiny"), "--rules", "rules.toml"]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// Two links to one directory are no loop: both are walked and copied.
#[test]
fn two_links_to_one_directory_are_read_through_both() {
    let sb = Sandbox::new();
    sb.copy_fixture("gpt2-tiny", "in");
    std::fs::create_dir(sb.path("common")).unwrap();
    std::fs::write(sb.path("common/vocab.txt"), "tokens").unwrap();
    for link in ["a", "b"] {
        std::os::unix::fs::symlink("../common", sb.path("in").join(link)).unwrap();
    }
    sb.ok(["coalesce", "in", "--heads", "2", "-o", "out"]);
    for link in ["a", "b"] {
        let copied = sb.path("out").join(link).join("vocab.txt");
        assert_eq!(std::fs::read_to_string(copied).unwrap(), "tokens");
    }
}
