//! What vcycle does with what other runs left, and leaves itself (docs/robustness.md, "Outputs",
//! "Signals"): planted work directories, live ones of another process or container, a group
//! commit killed half-way, outputs replaced through their own path, and runs interrupted by a
//! signal. Every race uses real separate processes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Sandbox, VCYCLE, entries, fixture, load, read_json, run_in};

/// A pid above Linux's pid_max: no process ever has it.
const DEAD: u32 = 4_000_000;

/// A work directory named as a dead run's, with `marker` as its marker and an entry `old`.
fn planted(dir: &Path, tag: &str, marker: &[u8]) -> PathBuf {
    let work = dir.join(format!(".vcycle-{DEAD}-{tag}.tmp"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join(".vcycle-work"), marker).unwrap();
    std::fs::write(work.join("old"), "planted").unwrap();
    work
}

fn coalesce_into(sb: &Sandbox, output: &str) {
    sb.ok([
        "coalesce",
        &fixture("gpt2-tiny"),
        "--heads",
        "2",
        "-o",
        output,
    ]);
}

#[test]
fn a_marker_naming_a_path_moves_nothing_anywhere() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.path("d")).unwrap();
    let outside = sb.path("escaped.txt");
    let absolute = sb.path("absolute.txt");
    let markers: [&[u8]; 6] = [
        b"../escaped.txt",
        absolute.to_str().unwrap().as_bytes(),
        b"sub/x",
        b"..",
        b".",
        b"",
    ];
    let planted: Vec<PathBuf> = markers
        .iter()
        .enumerate()
        .map(|(i, m)| planted(&sb.path("d"), &i.to_string(), m))
        .collect();
    coalesce_into(&sb, "d/out");
    assert!(
        !outside.exists() && !absolute.exists(),
        "{:?}",
        sb.entries()
    );
    assert_eq!(sb.entries(), ["d"]);
    // Not provably a vcycle run's: left exactly as it was.
    for work in planted {
        assert_eq!(
            std::fs::read_to_string(work.join("old")).unwrap(),
            "planted"
        );
    }
    assert!(!load(&sb.path("d/out/model.safetensors")).is_empty());
}

#[test]
fn a_huge_sparse_marker_is_not_read() {
    let sb = Sandbox::new();
    let work = planted(sb.root(), "a", b"x");
    std::fs::File::options()
        .write(true)
        .open(work.join(".vcycle-work"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let started = Instant::now();
    coalesce_into(&sb, "out");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(work.join("old").exists(), "left as it was");
}

#[test]
fn another_users_work_directory_is_never_acted_on() {
    // Only root can give a file to another user; every CI run is root.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to plant another user's files");
        return;
    }
    let sb = Sandbox::new();
    let work = planted(sb.root(), "a", b"out");
    // nobody:nogroup, on every Debian.
    for path in [work.join(".vcycle-work"), work.join("old"), work.clone()] {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(sb.root(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    coalesce_into(&sb, "other");
    assert!(
        !sb.path("out").exists(),
        "the planted `old` was not put back"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("old")).unwrap(),
        "planted"
    );
}

/// A process that holds the lock on a work directory's marker until killed, as a vcycle run in
/// another PID namespace does (its pid, seen from here, names no process).
// The caller kills the child and waits for it.
#[allow(clippy::zombie_processes)]
fn hold_lock(marker: &Path) -> Child {
    let mut child = Command::new("flock")
        .arg(marker)
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("flock (util-linux) runs");
    // `flock` takes the lock before starting `sleep`: wait until it is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let file = std::fs::File::open(marker).unwrap();
        if matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flock never took the lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_live_work_directory_of_another_pid_namespace_is_kept() {
    let sb = Sandbox::new();
    let live = planted(sb.root(), "live", b"out");
    let dead = planted(sb.root(), "dead", b"gone");
    let mut holder = hold_lock(&live.join(".vcycle-work"));
    coalesce_into(&sb, "out2");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        live.join("old").exists(),
        "a locked work directory is alive"
    );
    assert!(!dead.exists(), "an unlocked one of a dead pid is swept");
    // Its `old` went back to the name its marker gave.
    assert_eq!(std::fs::read_to_string(sb.path("gone")).unwrap(), "planted");
}

#[test]
fn a_group_commit_killed_between_its_renames_is_rolled_back_whole() {
    // A run writing `plan.json` and `out` together, killed after renaming the new plan in and
    // before moving the old output aside: the new plan is in place, the new output is not.
    let sb = Sandbox::new();
    let root = sb.root().canonicalize().unwrap();
    std::fs::write(root.join("plan.json"), "new plan").unwrap();
    std::fs::create_dir(root.join("out")).unwrap();
    std::fs::write(root.join("out/model"), "old output").unwrap();
    let plan_work = root.join(format!(".vcycle-{DEAD}-p.tmp"));
    let out_work = root.join(format!(".vcycle-{DEAD}-o.tmp"));
    for (work, name) in [(&plan_work, "plan.json"), (&out_work, "out")] {
        std::fs::create_dir(work).unwrap();
        std::fs::write(work.join(".vcycle-work"), name).unwrap();
        let group = format!("{}\n{}\n", plan_work.display(), out_work.display());
        std::fs::write(work.join("group"), group).unwrap();
    }
    std::fs::write(plan_work.join("old"), "old plan").unwrap();
    std::fs::create_dir(out_work.join("new")).unwrap();
    coalesce_into(&sb, "other");
    assert_eq!(sb.entries(), ["other", "out", "plan.json"]);
    assert_eq!(
        std::fs::read_to_string(root.join("plan.json")).unwrap(),
        "old plan"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("out/model")).unwrap(),
        "old output"
    );
}

#[test]
fn an_output_path_through_the_output_itself_is_replaced_or_refused_before_any_work() {
    let sb = Sandbox::new();
    let tiny = fixture("gpt2-tiny");
    // From inside the output, naming it through `..`.
    coalesce_into(&sb, "small");
    let run = run_in(
        &sb.path("small"),
        [
            "coalesce", &tiny, "--layers", "2", "-o", "../small", "--force",
        ],
    );
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(sb.entries(), ["small"]);
    assert_eq!(read_json(&sb.path("small/config.json"))["n_layer"], 2);

    // Through the output and back out of it.
    sb.ok([
        "coalesce",
        &tiny,
        "--heads",
        "2",
        "-o",
        "small/../small",
        "--force",
    ]);
    assert_eq!(sb.entries(), ["small"]);
    let config = read_json(&sb.path("small/config.json"));
    assert_eq!(
        (&config["n_layer"], &config["n_head"]),
        (&4.into(), &2.into())
    );

    // Ending in `.`: refused at once, nothing touched.
    for (output, words) in [
        ("small/.", "ends in `.`"),
        ("small/./", "ends in `.`"),
        (".", "has no file name"),
    ] {
        let run = sb.run(["coalesce", &tiny, "--heads", "2", "-o", output, "--force"]);
        assert_eq!(run.code, 2, "{run}");
        assert!(run.stderr.contains(words), "{run}");
        assert_eq!(sb.entries(), ["small"]);
        assert_eq!(
            entries(&sb.path("small")),
            ["config.json", "model.safetensors"]
        );
    }
}

#[test]
fn the_sweep_runs_before_the_existence_check() {
    let sb = Sandbox::new();
    // A killed --force replacement of `out` that had moved the old output aside.
    let work = planted(sb.root(), "a", b"out");
    std::fs::create_dir(work.join("new")).unwrap();
    let run = sb.run([
        "coalesce",
        &fixture("gpt2-tiny"),
        "--heads",
        "2",
        "-o",
        "out",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("already exists") && run.stderr.contains("--force"),
        "{run}"
    );
    // Refused before the work: no progress, and the old output is back.
    assert_eq!(std::fs::read_to_string(sb.path("out")).unwrap(), "planted");
    assert_eq!(sb.entries(), ["out"]);
}

/// Starts a conversion writing a model of about 200 MB into `out`, with `extra` arguments.
fn start_large_conversion(sb: &Sandbox, extra: &[&str]) -> Child {
    Command::new(VCYCLE)
        .args([
            "decoalesce",
            &fixture("gpt2-tiny"),
            "--heads",
            "32",
            "--layers",
            "16",
        ])
        .args(["-o", "out", "--quiet"])
        .args(extra)
        .current_dir(sb.root())
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until a work directory with content appears in `dir`.
fn wait_for_work_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !entries(dir)
        .iter()
        .any(|e| e.starts_with(".vcycle-") && entries(&dir.join(e)).len() > 1)
    {
        assert!(Instant::now() < deadline, "no work directory appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_signal_leaves_nothing_behind_and_kills_the_run_with_it() {
    use std::os::unix::process::ExitStatusExt;
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let sb = Sandbox::new();
        std::fs::write(sb.path("out"), "old output").unwrap();
        let mut child = start_large_conversion(&sb, &["--force"]);
        wait_for_work_dir(sb.root());
        // SAFETY: kill has no memory effects; the pid is our child's, not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        assert_eq!(sb.entries(), ["out"], "signal {signal}");
        assert_eq!(
            std::fs::read_to_string(sb.path("out")).unwrap(),
            "old output"
        );
    }
    // Without --force, into an empty directory.
    let sb = Sandbox::new();
    let mut child = start_large_conversion(&sb, &[]);
    wait_for_work_dir(sb.root());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    child.wait().unwrap();
    assert!(sb.entries().is_empty(), "{:?}", sb.entries());
}
