//! The promises of docs/robustness.md that a successful run keeps: links read through, inputs
//! that look like leftovers kept, side outputs written with the output, closed or full
//! streams. (Refusals are in the malformed-input corpus.)

use std::process::{Command, Stdio};

use crate::util::{Sandbox, VCYCLE, entries, fixtures_dir, load, read_json};

/// A HuggingFace hub snapshot: every file of `snap/main` a relative link into `snap/blobs`.
fn hub_snapshot(sb: &Sandbox) {
    let blobs = sb.path("snap/blobs");
    let main = sb.path("snap/main");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&main).unwrap();
    let fixture = fixtures_dir().join("gpt2-tiny");
    for (i, name) in ["config.json", "model.safetensors"].iter().enumerate() {
        std::fs::copy(fixture.join(name), blobs.join(format!("blob{i}"))).unwrap();
        std::os::unix::fs::symlink(format!("../blobs/blob{i}"), main.join(name)).unwrap();
    }
    std::fs::write(blobs.join("blob2"), "{\"tokenizer\": true}").unwrap();
    std::os::unix::fs::symlink("../blobs/blob2", main.join("tokenizer.json")).unwrap();
}

#[test]
fn a_hub_snapshot_of_links_converts_with_its_extra_files() {
    let sb = Sandbox::new();
    hub_snapshot(&sb);
    sb.ok(["coalesce", "snap/main", "--heads", "2", "-o", "out"]);
    assert_eq!(
        entries(&sb.path("out")),
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    let tokenizer = sb.path("out/tokenizer.json");
    assert!(
        tokenizer.symlink_metadata().unwrap().is_file(),
        "copied, not linked"
    );
    assert_eq!(
        std::fs::read_to_string(tokenizer).unwrap(),
        "{\"tokenizer\": true}"
    );
    assert_eq!(read_json(&sb.path("out/config.json"))["n_head"], 2);
}

#[cfg(target_os = "linux")]
#[test]
fn a_file_name_that_is_not_utf8_is_copied_as_it_is() {
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    sb.copy_fixture("gpt2-tiny", "in");
    let name = std::ffi::OsStr::from_bytes(b"vocab-\xff.txt");
    std::fs::write(sb.path("in").join(name), "tokens").unwrap();
    sb.ok(["coalesce", "in", "--heads", "2", "-o", "out"]);
    assert_eq!(
        std::fs::read_to_string(sb.path("out").join(name)).unwrap(),
        "tokens"
    );
}

#[test]
fn inputs_named_like_a_dead_runs_leftovers_are_never_swept() {
    // A pid that is not running: the largest possible, far above pid_max.
    let dead = u32::MAX;
    let sb = Sandbox::new();
    // A model directory with such a name, and one that even holds vcycle's marker, as a
    // killed run's work directory does.
    let plain = format!(".vcycle-{dead}-a.tmp");
    let marked = format!(".vcycle-{dead}-b.tmp");
    sb.copy_fixture("gpt2-tiny", &plain);
    // A model file with such a name, carrying its head count (8) in its metadata.
    let file = format!(".vcycle-{dead}-c.tmp");
    sb.ok(["decoalesce", &plain, "--heads", "8", "-o", "big"]);
    std::fs::rename(sb.path("big/model.safetensors"), sb.path(&file)).unwrap();
    std::fs::remove_dir_all(sb.path("big")).unwrap();
    sb.copy_fixture("gpt2-tiny", &marked);
    std::fs::write(sb.path(&marked).join(".vcycle-work"), "model").unwrap();
    let mut expected = sb.entries();

    // The marked directory is kept by the run that reads it.
    sb.ok(["coalesce", &marked, "--heads", "2", "-o", "from-marked"]);
    sb.ok([
        "coalesce",
        &file,
        "--heads",
        "2",
        "-o",
        "from-file.safetensors",
    ]);
    sb.ok(["coalesce", &plain, "--heads", "2", "-o", "from-plain"]);
    // What no vcycle run made is never swept, whatever it reads; a marked directory of a
    // dead process that this run does not read is.
    expected.retain(|e| *e != marked);
    expected.extend(["from-file.safetensors", "from-marked", "from-plain"].map(String::from));
    expected.sort();
    assert_eq!(sb.entries(), expected);
    assert_eq!(load(&sb.path(&file)).len(), load(&sb.path(&plain)).len());
}

#[test]
fn the_plan_is_written_with_the_output_and_replaced_only_with_force() {
    let sb = Sandbox::new();
    sb.copy_fixture("gpt2-tiny", "in");
    let convert = |force: bool| {
        let mut args = vec![
            "coalesce",
            "in",
            "--heads",
            "2",
            "-o",
            "out",
            "--plan-json",
            "plan.json",
        ];
        if force {
            args.push("--force");
        }
        sb.run(args)
    };
    assert_eq!(convert(false).code, 0);
    assert_eq!(sb.entries(), ["in", "out", "plan.json"]);
    assert!(read_json(&sb.path("plan.json"))["tensors"].is_array());
    std::fs::write(sb.path("plan.json"), "old plan").unwrap();
    std::fs::remove_dir_all(sb.path("out")).unwrap();
    // An existing plan stops the run before the output is written.
    let run = convert(false);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(sb.entries(), ["in", "plan.json"]);
    assert_eq!(convert(true).code, 0);
    assert_eq!(sb.entries(), ["in", "out", "plan.json"]);
    assert!(read_json(&sb.path("plan.json"))["tensors"].is_array());
}

/// Runs vcycle with stdout or stderr on /dev/full (every write fails with ENOSPC).
fn run_into_full(args: &[&str], stdout_full: bool) -> i32 {
    let sb = Sandbox::new();
    sb.copy_fixture("gpt2-tiny", "in");
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full");
    let (Ok(a), Ok(b)) = (full(), full()) else {
        return -2;
    };
    let mut command = Command::new(VCYCLE);
    command.args(args).current_dir(sb.root());
    if stdout_full {
        command.stdout(a).stderr(Stdio::null());
    } else {
        command.stdout(Stdio::null()).stderr(b);
    }
    command.status().unwrap().code().unwrap_or(-1)
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stream_is_an_error_with_its_exit_code_never_a_panic() {
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    // A refusal (exit 2) whose message cannot be written.
    assert_eq!(run_into_full(&["inspect", "missing"], false), 2);
    // A success whose warnings and summary cannot be written.
    assert_eq!(
        run_into_full(&["coalesce", "in", "--heads", "2", "-o", "out"], false),
        0
    );
    // Figures that cannot be written.
    assert_eq!(run_into_full(&["inspect", "in"], true), 2);
}
