//! Runs the malformed-input corpus (`corpus.rs`, the cases in `corpus/`): every case exits with
//! code 2, names its cause, never panics, prints nothing on stdout, and leaves the sandbox
//! exactly as it was: no output, no `.vcycle-*` temporary, every input byte unchanged. Also:
//! `--strict`'s warning side, `--allow-extrapolation`, and a conversion killed while it writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::Dtype;

use crate::corpus::{self, Case, Entry, Kind, Mount};
use crate::util::{Sandbox, Tensor, Tensors, VCYCLE, decode, encode, entries, load, save};

/// What a sandbox holds: every path (relative) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
    /// A FIFO, device or socket (not read: reading a FIFO blocks).
    Special,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for entry in std::fs::read_dir(dir).expect("a sandbox directory can be listed") {
            let path = entry.expect("a directory entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("inside the root")
                .to_path_buf();
            let meta = path.symlink_metadata().expect("metadata");
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).expect("a link target");
                out.insert(relative, Node::Link(target));
            } else if meta.is_dir() {
                out.insert(relative, Node::Dir);
                walk(root, &path, out);
            } else if !meta.is_file() {
                out.insert(relative, Node::Special);
            } else {
                out.insert(relative, Node::File(std::fs::read(&path).expect("a file")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Paths whose content differs between two snapshots.
fn changes(before: &BTreeMap<PathBuf, Node>, after: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    paths
        .into_iter()
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| {
            let what = match (before.get(p), after.get(p)) {
                (None, _) => "created",
                (_, None) => "deleted",
                _ => "changed",
            };
            format!("{} {what}", p.display())
        })
        .collect()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tmpfs mounted for one case, unmounted when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, options: &str) -> Result<Mounted, String> {
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if status.status.success() {
        Ok(Mounted(dir.to_path_buf()))
    } else {
        Err(format!(
            "mount -t tmpfs -o {options} failed: {}",
            String::from_utf8_lossy(&status.stderr).trim()
        ))
    }
}

enum Outcome {
    Pass,
    Skipped(String),
    Fail(String),
}

/// Builds a case's sandbox; the guard keeps its mount (if any) alive.
fn prepare(case: &Case) -> Result<(Sandbox, Option<Mounted>), String> {
    let sb = Sandbox::new();
    let mut guard = None;
    if case.mount != Mount::None {
        let dir = sb.path(case.mount_at);
        std::fs::create_dir(&dir).expect("a mount point can be created");
        match case.mount {
            Mount::ReadOnly if is_root() => {
                // chmod does not stop root: a read-only filesystem does.
                guard = Some(mount_tmpfs(&dir, "ro,size=64k").map_err(|e| {
                    format!("running as root, where only a read-only mount stops writes, and {e}")
                })?);
            }
            Mount::ReadOnly => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555))
                        .expect("permissions can be set");
                }
            }
            Mount::Full(size) => {
                guard = Some(
                    mount_tmpfs(&dir, &format!("size={size}"))
                        .map_err(|e| format!("a small filesystem is needed, and {e}"))?,
                );
            }
            Mount::None => {}
        }
    }
    for (path, entry) in &case.entries {
        let path = sb.path(path);
        match entry {
            Entry::Dir => std::fs::create_dir_all(&path).expect("a directory can be created"),
            Entry::File(bytes) => std::fs::write(&path, bytes).expect("a file can be written"),
            Entry::Fifo => {
                let _ = std::fs::remove_file(&path);
                let made = Command::new("mkfifo").arg(&path).status();
                if !made.is_ok_and(|s| s.success()) {
                    return Err("mkfifo is needed".into());
                }
            }
            Entry::Symlink(target) => {
                #[cfg(unix)]
                std::os::unix::fs::symlink(target, &path).expect("a symlink can be created");
                #[cfg(not(unix))]
                return Err(format!("symlinks to {target} need unix"));
            }
        }
    }
    Ok((sb, guard))
}

fn run_case(case: &Case) -> Outcome {
    let (sb, _guard) = match prepare(case) {
        Ok(prepared) => prepared,
        Err(reason) => return Outcome::Skipped(reason),
    };
    let before = snapshot(sb.root());
    let run = sb.run(&case.args);
    let mut problems = Vec::new();
    if run.code != 2 {
        problems.push(format!("exit code {} (expected 2)", run.code));
    }
    if run.stderr.contains("panicked") || run.code == 101 {
        problems.push("it panicked".into());
    }
    if !run.stdout.is_empty() {
        problems.push("it printed on stdout".into());
    }
    for needle in &case.needles {
        if !run.stderr.contains(needle.as_str()) {
            problems.push(format!("stderr does not mention {needle:?}"));
        }
    }
    let changed = changes(&before, &snapshot(sb.root()));
    if !changed.is_empty() {
        problems.push(format!("the sandbox changed: {changed:?}"));
    }
    if problems.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(format!("{}\n{run}", problems.join("; ")))
    }
}

#[test]
fn every_malformed_input_is_refused_cleanly() {
    let cases = corpus::cases();
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    let kinds: BTreeSet<Kind> = cases
        .iter()
        .chain(&corpus::warning_cases())
        .map(|c| c.kind)
        .collect();
    for kind in Kind::ALL {
        assert!(kinds.contains(&kind), "the corpus has no case of {kind:?}");
    }

    let mut failures = Vec::new();
    let mut skipped = 0;
    for case in &cases {
        match run_case(case) {
            Outcome::Pass => {}
            Outcome::Skipped(reason) => {
                skipped += 1;
                println!("SKIPPED {} ({:?}): {reason}", case.name, case.kind);
            }
            Outcome::Fail(message) => failures.push(format!("=== {}: {message}", case.name)),
        }
    }
    println!(
        "malformed-input corpus: {} cases, {} refused cleanly, {skipped} skipped, {} failed",
        cases.len(),
        cases.len() - skipped - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn non_finite_weights_warn_by_default_naming_the_tensor() {
    for case in corpus::warning_cases() {
        let (sb, _guard) = prepare(&case).expect("no mount needed");
        let run = sb.run(&case.args);
        assert_eq!(run.code, 0, "{run}");
        for needle in &case.needles {
            assert!(run.stderr.contains(needle.as_str()), "{needle:?}:\n{run}");
        }
        // The NaN is carried into the output (averaged), not hidden.
        let out = load(&sb.path("out"));
        assert!(
            out.values()
                .any(|t| t.is_float() && t.values().iter().any(|v| v.is_nan())),
            "the output holds the NaN"
        );
    }
}

#[test]
fn a_dry_run_reads_no_tensor_data_so_it_neither_scans_nor_refuses_non_finite_weights() {
    for case in corpus::warning_cases() {
        let (sb, _guard) = prepare(&case).expect("no mount needed");
        let run = sb.run(["coalesce", "in", "--heads", "2", "--dry-run", "--strict"]);
        assert_eq!(run.code, 0, "{run}");
        assert!(!run.stderr.contains("NaN"), "{run}");
        assert!(!run.stdout.is_empty(), "the plan is printed:\n{run}");
    }
}

#[test]
fn an_output_that_overflows_its_dtype_warns_without_strict() {
    let case = corpus::cases()
        .into_iter()
        .find(|c| c.name == "f16-overflow-strict")
        .expect("the overflow case");
    let (sb, _guard) = prepare(&case).expect("no mount needed");
    let args: Vec<&String> = case.args.iter().filter(|a| *a != "--strict").collect();
    let run = sb.run(args);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stderr
            .contains("warning: output tensor `transformer.h.0.attn.c_proj.weight`")
            && run.stderr.contains("overflowed"),
        "{run}"
    );
}

#[test]
fn extrapolation_is_allowed_when_asked() {
    let sb = Sandbox::new();
    let a: Tensors = [(
        "w".to_string(),
        Tensor {
            dtype: Dtype::F32,
            shape: vec![3],
            data: encode(Dtype::F32, &[1.0, 2.0, -4.0]),
        },
    )]
    .into();
    let mut b = a.clone();
    b.get_mut("w").expect("w").data = encode(Dtype::F32, &[3.0, 2.0, 0.0]);
    save(&sb.path("a.safetensors"), &a, None);
    save(&sb.path("b.safetensors"), &b, None);
    for (alpha, expected) in [("1.5", [4.0, 2.0, 2.0]), ("-0.5", [0.0, 2.0, -6.0])] {
        let alpha_arg = format!("--alpha={alpha}");
        let args = [
            "interpolate",
            "a.safetensors",
            "b.safetensors",
            alpha_arg.as_str(),
            "--allow-extrapolation",
            "-o",
            "out.safetensors",
            "--force",
        ];
        sb.ok(args);
        let out = load(&sb.path("out.safetensors"));
        assert_eq!(
            decode(Dtype::F32, &out["w"].data),
            expected,
            "alpha {alpha}"
        );
    }
}

/// Two checkpoints of `tensors` × `size` f32 values, large enough that interpolating them
/// takes a while.
fn big_pair(sb: &Sandbox, tensors: usize, size: usize) {
    for (file, value) in [("a.safetensors", 1.0), ("b.safetensors", 3.0)] {
        let all: Tensors = (0..tensors)
            .map(|i| {
                (
                    format!("t{i:02}"),
                    Tensor {
                        dtype: Dtype::F32,
                        shape: vec![size],
                        data: encode(Dtype::F32, &vec![value; size]),
                    },
                )
            })
            .collect();
        save(&sb.path(file), &all, None);
    }
}

/// Starts `vcycle args`, waits until its temporary output exists and holds data, and kills
/// it (SIGKILL: nothing can run on the way out). Returns its pid.
fn kill_mid_write(sb: &Sandbox, args: &[&str]) -> u32 {
    let mut child = Command::new(VCYCLE)
        .args(args)
        .current_dir(sb.root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vcycle starts");
    let pid = child.id();
    let start = Instant::now();
    loop {
        // The new output in a work directory (a file, or a directory's model file), holding data.
        let writing = entries(sb.root()).iter().any(|n| {
            let new = sb.path(n).join("new");
            let file = if new.is_dir() {
                new.join("model.safetensors")
            } else {
                new
            };
            n.starts_with(".vcycle-") && file.metadata().is_ok_and(|m| m.len() > 4096)
        });
        if writing {
            break;
        }
        if let Some(status) = child.try_wait().expect("the child can be polled") {
            panic!("vcycle finished ({status}) before it could be killed mid-write");
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "vcycle never started writing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("the child can be killed");
    child.wait().expect("the child is reaped");
    pid
}

#[test]
fn a_conversion_killed_mid_write_leaves_no_output_and_the_next_run_sweeps_up() {
    let sb = Sandbox::new();
    big_pair(&sb, 16, 1 << 20);
    let interpolate = |force: bool| {
        let mut args = vec![
            "interpolate",
            "a.safetensors",
            "b.safetensors",
            "--alpha",
            "0.5",
            "-o",
            "out.safetensors",
        ];
        if force {
            args.push("--force");
        }
        args
    };

    // Killed while writing a new output: no output, only the dead process's temporary.
    let pid = kill_mid_write(&sb, &interpolate(false));
    let leftovers: Vec<String> = sb
        .entries()
        .into_iter()
        .filter(|n| n.starts_with(".vcycle-"))
        .collect();
    assert!(!sb.path("out.safetensors").exists(), "no partial output");
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    assert!(
        leftovers[0].starts_with(&format!(".vcycle-{pid}-")),
        "the temporary names its process: {leftovers:?}"
    );

    // Killed while replacing an existing output with --force: the old one is intact.
    std::fs::write(sb.path("out.safetensors"), "the previous output").expect("a file");
    kill_mid_write(&sb, &interpolate(true));
    assert_eq!(
        std::fs::read_to_string(sb.path("out.safetensors"))
            .ok()
            .as_deref(),
        Some("the previous output")
    );

    // The next run into the directory removes both dead temporaries and writes its output.
    sb.ok(interpolate(true));
    assert_eq!(
        sb.entries(),
        ["a.safetensors", "b.safetensors", "out.safetensors"]
    );
    let out = load(&sb.path("out.safetensors"));
    assert_eq!(out.len(), 16);
    assert!(
        decode(Dtype::F32, &out["t15"].data)
            .iter()
            .all(|&v| v == 2.0)
    );

    // A directory output killed mid-write: the temporary directory goes the same way.
    for (file, dir) in [("a.safetensors", "a"), ("b.safetensors", "b")] {
        std::fs::create_dir(sb.path(dir)).expect("a directory");
        std::fs::rename(sb.path(file), sb.path(dir).join("model.safetensors")).expect("a move");
    }
    let args = ["interpolate", "a", "b", "--alpha", "0.5", "-o", "out"];
    let pid = kill_mid_write(&sb, &args);
    assert!(!sb.path("out").exists(), "no partial output directory");
    assert!(
        sb.entries()
            .iter()
            .any(|n| n.starts_with(&format!(".vcycle-{pid}-"))),
        "{:?}",
        sb.entries()
    );
    sb.ok(args);
    assert_eq!(sb.entries(), ["a", "b", "out", "out.safetensors"]);
    assert_eq!(entries(&sb.path("out")), ["model.safetensors"]);
}
