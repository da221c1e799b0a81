//! The output's form: directory → directory (config.json rewritten, other files copied),
//! file → file (head counts carried in `vcycle.*` metadata), and deterministic bytes.

use std::path::Path;

use serde_json::{Value, json};

use crate::util::{
    FIXTURES, Sandbox, assert_mentions, assert_nothing_written, assert_tensors_eq, entries,
    fixture, fixtures_dir, load, load_file, read_json,
};

#[test]
fn directory_output_rewrites_every_size_field_and_nothing_else() {
    let cases = [
        (
            "gpt2-tiny",
            json!({"n_embd": 32, "n_head": 2, "n_layer": 2, "n_inner": 128}),
        ),
        (
            "bert-tiny",
            json!({"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 128}),
        ),
    ];
    for (name, changes) in cases {
        let sb = Sandbox::new();
        let input = fixture(name);
        sb.ok([
            "coalesce",
            input.as_str(),
            "--heads",
            "2",
            "--layers",
            "2",
            "-o",
            "out",
        ]);
        let original = read_json(&fixtures_dir().join(name).join("config.json"));
        let mut expected = original.clone();
        for (key, value) in changes.as_object().expect("changes are an object") {
            assert_ne!(
                original[key], *value,
                "{name}: {key} must change for the test to mean anything"
            );
            expected[key] = value.clone();
        }
        let written = read_json(&sb.path("out/config.json"));
        assert_eq!(written, expected, "{name}: rewritten config.json");
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .expect("config.json is an object")
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(keys(&written), keys(&original), "{name}: key order");
        assert_eq!(
            entries(&sb.path("out")),
            ["config.json", "model.safetensors"],
            "{name}: files of the output directory"
        );
    }
}

#[test]
fn extra_files_of_the_input_directory_are_copied() {
    let sb = Sandbox::new();
    let input = sb.copy_fixture("gpt2-tiny", "in");
    let extras = [
        (
            "tokenizer.json",
            r#"{"version": "1.0", "model": {"type": "BPE"}}"#,
        ),
        ("generation_config.json", r#"{"max_length": 20}"#),
        ("README.md", "# tiny gpt2\n"),
    ];
    for (file, text) in extras {
        std::fs::write(input.join(file), text).expect("an extra file can be written");
    }
    sb.ok(["decoalesce", "in", "--heads", "8", "-o", "out"]);
    let mut expected = vec![
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ];
    expected.sort_unstable();
    assert_eq!(entries(&sb.path("out")), expected);
    for (file, text) in extras {
        let copied =
            std::fs::read_to_string(sb.path("out").join(file)).expect("the copy can be read");
        assert_eq!(copied, text, "{file} is copied unchanged");
    }
}

/// A bare `model.safetensors` as HuggingFace writes it, without config.json.
fn bare_copy(sb: &Sandbox, name: &str, dest: &str) -> std::path::PathBuf {
    let to = sb.path(dest);
    std::fs::copy(fixtures_dir().join(name).join("model.safetensors"), &to)
        .expect("the fixture's model file can be copied");
    to
}

#[test]
fn bare_huggingface_file_without_config_fails_on_heads() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        bare_copy(&sb, name, "bare.safetensors");
        let run = sb.run([
            "coalesce",
            "bare.safetensors",
            "--heads",
            "2",
            "-o",
            "small.safetensors",
        ]);
        assert_eq!(run.code, 2, "{run}");
        assert_mentions(&run, &["bare.safetensors", "heads"]);
        assert_nothing_written(&sb.path("small.safetensors"));
    }
}

#[test]
fn file_input_gives_file_output_and_vcycle_files_carry_their_heads() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        // A file written by vcycle: the model file of a directory output, moved out on its own.
        sb.ok([
            "decoalesce",
            input.as_str(),
            "--heads",
            "8",
            "--layers",
            "8",
            "-o",
            "large",
        ]);
        std::fs::rename(
            sb.path("large/model.safetensors"),
            sb.path("large.safetensors"),
        )
        .expect("the model file can be moved");
        std::fs::remove_dir_all(sb.path("large")).expect("the directory can be removed");

        sb.ok([
            "coalesce",
            "large.safetensors",
            "--heads",
            "4",
            "--layers",
            "4",
            "-o",
            "small.safetensors",
        ]);
        let small = sb.path("small.safetensors");
        assert!(small.is_file(), "{name}: a file input gives a file output");
        let (tensors, metadata) = load_file(&small);
        assert_tensors_eq(
            &tensors,
            &load(&fixtures_dir().join(name)),
            &format!("{name}: round trip through bare files"),
        );
        let arch = name.trim_end_matches("-tiny");
        assert_eq!(
            metadata.get("vcycle.heads").map(String::as_str),
            Some("4"),
            "{name}"
        );
        assert_eq!(
            metadata.get("vcycle.arch").map(String::as_str),
            Some(arch),
            "{name}"
        );

        // The file written by `coalesce` on a file input is itself a valid input.
        sb.ok([
            "decoalesce",
            "small.safetensors",
            "--heads",
            "8",
            "-o",
            "wide.safetensors",
        ]);
        let (wide, metadata) = load_file(&sb.path("wide.safetensors"));
        assert_eq!(
            metadata.get("vcycle.heads").map(String::as_str),
            Some("8"),
            "{name}"
        );
        let embedding = if arch == "gpt2" {
            "transformer.wte.weight"
        } else {
            "bert.embeddings.word_embeddings.weight"
        };
        assert_eq!(wide[embedding].shape, [128, 128], "{name}: {embedding}");
        let run = sb.ok(["inspect", "wide.safetensors"]);
        assert!(
            run.stdout.contains("heads:        8 "),
            "{name}: inspect of a vcycle file reads its heads:\n{run}"
        );
    }
}

fn assert_same_files(a: &Path, b: &Path) {
    let names = entries(a);
    assert_eq!(names, entries(b), "{} and {}", a.display(), b.display());
    for name in names {
        let x = std::fs::read(a.join(&name)).expect("an output file can be read");
        let y = std::fs::read(b.join(&name)).expect("an output file can be read");
        assert!(x == y, "{name} differs between two identical runs");
    }
}

#[test]
fn output_bytes_are_deterministic() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        for out in ["one", "two"] {
            sb.ok([
                "decoalesce",
                input.as_str(),
                "--heads",
                "8",
                "--layers",
                "8",
                "--width-scheme",
                "adjacent",
                "-o",
                out,
            ]);
            sb.ok([
                "coalesce",
                input.as_str(),
                "--heads",
                "2",
                "--shard-size",
                "100KB",
                "-o",
                &format!("{out}-sharded"),
            ]);
        }
        assert_same_files(&sb.path("one"), &sb.path("two"));
        assert_same_files(&sb.path("one-sharded"), &sb.path("two-sharded"));

        for out in ["one.safetensors", "two.safetensors"] {
            sb.ok([
                "coalesce",
                "one/model.safetensors",
                "--heads",
                "2",
                "-o",
                out,
            ]);
        }
        assert!(
            std::fs::read(sb.path("one.safetensors")).ok()
                == std::fs::read(sb.path("two.safetensors")).ok(),
            "{name}: file outputs of two identical runs differ"
        );
    }
}

#[cfg(unix)]
#[test]
fn file_output_has_the_permissions_of_a_normally_created_file() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    sb.ok(["decoalesce", input.as_str(), "--heads", "8", "-o", "large"]);
    sb.ok([
        "coalesce",
        "large/model.safetensors",
        "--heads",
        "4",
        "-o",
        "small.safetensors",
    ]);
    // What any other tool writing a file here gets under the same umask.
    std::fs::write(sb.path("reference"), b"x").expect("a file can be written");
    let mode = |p: &str| {
        std::fs::metadata(sb.path(p))
            .expect("the file exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        format!("{:o}", mode("small.safetensors")),
        format!("{:o}", mode("reference")),
        "a file output should be as readable as any file created under the user's umask"
    );
    assert_eq!(
        format!("{:o}", mode("large/model.safetensors")),
        format!("{:o}", mode("reference")),
        "the model file of a directory output"
    );
}
