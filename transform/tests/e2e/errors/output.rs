//! Refusals about the output: an existing one needs --force (and --force replaces it), an output
//! equal to, inside or around the input is refused, and a refused run leaves a good output
//! alone.

use std::path::Path;

use super::refuses;
use crate::util::{
    Sandbox, assert_mentions, assert_tensors_eq, entries, fixture, fixtures_dir, load,
};

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
