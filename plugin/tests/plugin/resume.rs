//! A run killed after its first boundary resumes from it and completes, leaving the earlier
//! boundary untouched. The killed run is this test binary itself, started as a child process
//! that runs only `resume::child_run` (ignored unless asked for).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::tensor::Device;
use vcycle_plugin::data::{ByteWindows, LmBatch, LmBatcher, split_train_valid};
use vcycle_plugin::{Error, Gpt2, VCycle, VCycleConfig};

use crate::support::*;

const CHILD_ENV: &str = "VCYCLE_PLUGIN_CHILD_RUN";

/// Down 3 steps, bottom 60 (slowed down in the child), up 3.
fn config() -> VCycleConfig {
    let mut c = two_levels(Some(2), Some(1), 3);
    c.bottom_steps = 60;
    c
}

/// Batches that take at least 40 ms each, so the child is still in its second segment when
/// the parent kills it.
#[derive(Clone)]
struct SlowBatcher;

impl Batcher<Vec<i64>, LmBatch> for SlowBatcher {
    fn batch(&self, items: Vec<Vec<i64>>, device: &Device) -> LmBatch {
        sleep(Duration::from_millis(40));
        LmBatcher.batch(items, device)
    }
}

/// The killed run (only when the parent test starts it).
#[test]
#[ignore = "started as a child process by killed_run_resumes_from_last_boundary"]
fn child_run() {
    let Some(run) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let text = corpus();
    let (train, valid) = split_train_valid(&text[..24_000], 10, 512);
    let train = DataLoaderBuilder::new(SlowBatcher)
        .batch_size(4)
        .shuffle(7)
        .build(ByteWindows::new(train, 16, 16));
    let valid = DataLoaderBuilder::new(LmBatcher)
        .batch_size(4)
        .build(ByteWindows::new(valid, 16, 16));
    let device = Device::flex().autodiff();
    let model = tiny_gpt2().init(&device).expect("model");
    VCycle::new(config(), PathBuf::from(run), device)
        .expect("driver")
        .run(model, train, valid, quiet_training)
        .expect("V-cycle");
}

/// A copy of the run changed by a function, and the words of its refusal.
type Tampering<'a> = (&'a str, &'a dyn Fn(&Path), &'a str);

/// Requires a resume refused for a reason containing `words`.
fn assert_resume_refused<T>(result: vcycle_plugin::Result<T>, words: &str) {
    match result {
        Err(Error::Resume { message, .. }) => assert!(message.contains(words), "{message}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("not refused: {words}"),
    }
}

fn completed(run: &Path) -> usize {
    std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["completed_segments"].as_u64())
        .map_or(0, |n| n as usize)
}

/// Every file under `dir`, relative path → bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).expect("prefix").to_path_buf();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

#[test]
fn killed_run_resumes_from_last_boundary() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "resume::child_run",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    while completed(&run) < 1 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended ({status}) before its first boundary");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no boundary after 2 minutes"
        );
        sleep(Duration::from_millis(10));
    }
    // While the child trains, the directory is its own: a resume from this process is refused,
    // naming the child.
    let (train, valid) = loaders(24_000, 16, 4);
    let busy = VCycle::<Gpt2>::new(config(), &run, Device::flex().autodiff())
        .expect("driver")
        .resume(fresh_gpt2(), train, valid, quiet_training);
    let Err(Error::RunDirectory { message, .. }) = busy else {
        panic!("a second training in a run directory in use was not refused");
    };
    assert!(
        message.contains(&format!("process {}", child.id())),
        "{message}"
    );
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    let at_kill = completed(&run);
    assert_eq!(
        at_kill, 1,
        "the child should be killed during its second segment"
    );

    let first = [
        "checkpoints/00-init",
        "checkpoints/01-down-L1",
        "checkpoints/01-to-L2",
    ];
    let before: Vec<_> = first.iter().map(|d| snapshot(&run.join(d))).collect();
    let log_before: Vec<vcycle_plugin::BoundaryRecord> =
        serde_json::from_str(&std::fs::read_to_string(run.join("boundaries.json")).expect("log"))
            .expect("log JSON");
    assert_eq!(log_before.len(), 1);

    // A changed configuration is refused.
    let (train, valid) = loaders(24_000, 16, 4);
    let changed = config().with_alpha(0.25);
    let refused = VCycle::<Gpt2>::new(changed, &run, Device::flex().autodiff())
        .expect("driver")
        .resume(fresh_gpt2(), train.clone(), valid.clone(), quiet_training);
    assert_resume_refused(refused, "configuration differs");
    // So are other options of the caller's than the run started with.
    let refused = VCycle::<Gpt2>::new(config(), &run, Device::flex().autodiff())
        .expect("driver")
        .with_run_options(serde_json::json!({"seq": 32}))
        .resume(fresh_gpt2(), train.clone(), valid.clone(), quiet_training);
    assert_resume_refused(refused, "options");

    // A state or a checkpoint changed since the run stopped is refused before anything is
    // allocated or removed.
    let tampered: [Tampering; 3] = [
        (
            "huge-count",
            &|run| {
                let path = run.join("state.json");
                let mut state: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).expect("state"))
                        .expect("state JSON");
                state["completed_segments"] = 1_000_000_000_000u64.into();
                std::fs::write(&path, state.to_string()).expect("write state");
            },
            "1000000000000 segments completed",
        ),
        (
            "changed-checkpoint",
            &|run| {
                let path = run.join("checkpoints/01-to-L2/model.safetensors");
                let mut bytes = std::fs::read(&path).expect("checkpoint");
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                std::fs::write(&path, bytes).expect("write checkpoint");
            },
            "checksum differs",
        ),
        (
            "missing-checkpoint",
            &|run| {
                std::fs::remove_file(run.join("checkpoints/01-down-L1/config.json"))
                    .expect("remove");
            },
            "is missing",
        ),
    ];
    for (name, tamper, words) in tampered {
        let copy = dir.path().join(name);
        for (rel, bytes) in snapshot(&run) {
            let path = copy.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, bytes).expect("copy");
        }
        tamper(&copy);
        let refused = VCycle::<Gpt2>::new(config(), &copy, Device::flex().autodiff())
            .expect("driver")
            .resume(fresh_gpt2(), train.clone(), valid.clone(), quiet_training);
        assert_resume_refused(refused, words);
    }

    let outcome = VCycle::<Gpt2>::new(config(), &run, Device::flex().autodiff())
        .expect("driver")
        .resume(fresh_gpt2(), train, valid, quiet_training)
        .expect("resume");
    assert_eq!(outcome.boundaries.len(), 3);
    assert_eq!(outcome.boundaries[0], log_before[0]);
    assert_eq!(outcome.steps, 66);
    assert_eq!(completed(&run), 3);
    for (d, snap) in first.iter().zip(&before) {
        assert_eq!(&snapshot(&run.join(d)), snap, "{d} changed");
    }
    assert!(run.join("final/model.safetensors").is_file());
    // No temporary leftovers of the killed run.
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Resuming a finished run returns its final model.
    let (train, valid) = loaders(24_000, 16, 4);
    let again = VCycle::<Gpt2>::new(config(), &run, Device::flex().autodiff())
        .expect("driver")
        .resume(fresh_gpt2(), train, valid, quiet_training)
        .expect("resume finished run");
    assert_eq!(again.boundaries, outcome.boundaries);
}
