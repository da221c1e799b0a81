//! A run killed while it writes a boundary checkpoint: the half-written temporary is never
//! taken for a checkpoint, the earlier boundaries stay byte for byte, and `resume` clears the
//! leftovers and completes the cycle.
//!
//! The killed run is this test binary started again as a child process that runs only
//! `killed_write::child_run`. Its model is a GPT-2 wrapped so that writing the second
//! boundary's checkpoint stops half-way (the weights file cut to half its length, not yet
//! renamed into place) and waits to be killed: the kill lands mid-write every time, with no
//! hook in the plugin's own code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::Device;
use burn::train::{InferenceStep, SequenceOutput, TrainOutput, TrainStep};
use vcycle_plugin::data::LmBatch;
use vcycle_plugin::{
    ArchChoice, BoundaryRecord, FlopCounter, Gpt2, Resizable, Sizes, VCycle, VCycleModel,
};

use crate::support::*;

const CHILD_ENV: &str = "VCYCLE_PLUGIN_KILLED_WRITE_RUN";
/// The checkpoint whose write the child stops in: the second boundary's trained model.
const STOP_IN: &str = "02-bottom-L2";
/// The file in a write's work directory `.vcycle-PID-RANDOM.tmp` that names the output
/// (`vcycle_transform::replace_atomically`); the new content is `new` beside it, an old
/// output being replaced `old`.
const WORK_MARKER: &str = ".vcycle-work";

/// A GPT-2 that stops in the middle of writing [`STOP_IN`] and waits to be killed, after
/// creating the file `marker` to say so.
#[derive(Module, Debug)]
struct StoppingGpt2 {
    inner: Gpt2,
    #[module(skip)]
    marker: PathBuf,
}

impl TrainStep for StoppingGpt2 {
    type Input = LmBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<SequenceOutput> {
        let out = self.inner.forward_lm(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for StoppingGpt2 {
    type Input = LmBatch;
    type Output = SequenceOutput;

    fn step(&self, batch: LmBatch) -> SequenceOutput {
        self.inner.forward_lm(batch)
    }
}

impl Resizable for StoppingGpt2 {
    fn arch(&self) -> vcycle_plugin::Result<ArchChoice> {
        self.inner.arch()
    }

    fn sizes(&self) -> Sizes {
        self.inner.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> vcycle_plugin::Result<Self> {
        Ok(StoppingGpt2 {
            inner: self.inner.resized(sizes, device)?,
            marker: self.marker.clone(),
        })
    }

    fn write_files(&self, dir: &Path) -> vcycle_plugin::Result<()> {
        self.inner.write_files(dir)?;
        // `dir` is `new` in the write's work directory, whose marker names the output.
        let work = dir.parent().unwrap();
        let output = std::fs::read(work.join(WORK_MARKER)).unwrap_or_default();
        if output == STOP_IN.as_bytes() {
            let name = work.file_name().unwrap().to_string_lossy().into_owned();
            let weights = dir.join("model.safetensors");
            let len = std::fs::metadata(&weights).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&weights)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            std::fs::write(&self.marker, name).unwrap();
            sleep(Duration::from_secs(300));
            panic!("the parent test did not kill this run");
        }
        Ok(())
    }

    fn load_dir(&self, dir: &Path, device: &Device) -> vcycle_plugin::Result<Self> {
        Ok(StoppingGpt2 {
            inner: self.inner.load_dir(dir, device)?,
            marker: self.marker.clone(),
        })
    }
}

impl VCycleModel for StoppingGpt2 {
    fn flop_counter(&self) -> vcycle_plugin::Result<FlopCounter<LmBatch>> {
        self.inner.flop_counter()
    }
}

/// The child's marker file: beside its run directory.
fn marker_path() -> PathBuf {
    let run = PathBuf::from(std::env::var_os(CHILD_ENV).unwrap_or_default());
    run.with_file_name("stopped-mid-write")
}

/// The killed run (only when the parent test starts it).
#[test]
#[ignore = "started as a child process by kill_mid_checkpoint_write_keeps_earlier_boundaries"]
fn child_run() {
    let Some(run) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let device = Device::flex().autodiff();
    let (train, valid) = loaders(24_000, 16, 4);
    let model = StoppingGpt2 {
        inner: tiny_gpt2().init(&device).expect("model"),
        marker: marker_path(),
    };
    VCycle::new(two_levels(Some(2), Some(1), 3), PathBuf::from(run), device)
        .expect("driver")
        .run(model, train, valid, |_, training| {
            training
                .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                .with_application_logger(None)
        })
        .expect("V-cycle");
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

fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// A write's work directory in `dir`, as process `pid` leaves it when killed while writing
/// `output`.
fn plant_work_dir(dir: &Path, pid: u32, output: &str) -> PathBuf {
    let work = dir.join(format!(".vcycle-{pid}-{output}.tmp"));
    std::fs::create_dir(&work).expect("plant");
    std::fs::write(work.join(WORK_MARKER), output).expect("plant");
    work
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON")
}

#[test]
fn kill_mid_checkpoint_write_keeps_earlier_boundaries() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let marker = run.with_file_name("stopped-mid-write");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "killed_write::child_run",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let started = Instant::now();
    while !marker.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child ended ({status}) before it stopped mid-write");
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the child did not reach the second boundary in 2 minutes"
        );
        sleep(Duration::from_millis(10));
    }
    // The child waits inside the write: everything on disk now is what a kill sees.
    let checkpoints = run.join("checkpoints");
    let earlier = [
        "checkpoints/00-init",
        "checkpoints/01-down-L1",
        "checkpoints/01-to-L2",
    ];
    let before: Vec<_> = earlier.iter().map(|d| snapshot(&run.join(d))).collect();
    let state_before = std::fs::read(run.join("state.json")).expect("state");
    child.kill().expect("kill child");
    child.wait().expect("reap child");

    // The temporary is there, half-written, and not taken for a checkpoint.
    let pid = child.id();
    let tmp_name = std::fs::read_to_string(&marker).expect("marker");
    assert!(
        tmp_name.starts_with(&format!(".vcycle-{pid}-")),
        "{tmp_name}"
    );
    assert_eq!(hidden_entries(&checkpoints), vec![tmp_name.clone()]);
    assert!(!checkpoints.join(STOP_IN).exists());
    assert!(Gpt2::load(&checkpoints.join(&tmp_name).join("new"), &device()).is_err());
    for (d, snap) in earlier.iter().zip(&before) {
        assert_eq!(&snapshot(&run.join(d)), snap, "{d} changed");
    }
    // The state and the log parse and name the first boundary as the last completed one.
    assert_eq!(
        std::fs::read(run.join("state.json")).expect("state"),
        state_before
    );
    let state = read_json(&run.join("state.json"));
    assert_eq!(state["completed_segments"], 1);
    let log: Vec<BoundaryRecord> =
        serde_json::from_value(read_json(&run.join("boundaries.json"))).expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].boundary, 1);
    let state_log: Vec<BoundaryRecord> =
        serde_json::from_value(state["boundaries"].clone()).expect("state log");
    assert_eq!(state_log, log);

    // What a kill at other points of a boundary leaves, laid over this run: a half-written
    // state file and log (killed in `write_file_atomically`), a log one record ahead of the
    // state (killed between the two writes), and a kept checkpoint moved aside by a
    // replacement that never finished.
    let text = String::from_utf8(state_before.clone()).expect("UTF-8");
    let state_work = plant_work_dir(&run, pid, "state.json");
    std::fs::write(state_work.join("new"), &text[..text.len() / 2]).expect("plant");
    let log_work = plant_work_dir(&run, pid, "boundaries.json");
    std::fs::write(log_work.join("new"), "[{").expect("plant");
    let mut ahead = log.clone();
    ahead.push(BoundaryRecord {
        boundary: 2,
        ..log[0].clone()
    });
    std::fs::write(
        run.join("boundaries.json"),
        serde_json::to_string_pretty(&ahead).expect("JSON"),
    )
    .expect("plant");
    let moved_aside = plant_work_dir(&checkpoints, pid, "01-to-L2");
    std::fs::rename(checkpoints.join("01-to-L2"), moved_aside.join("old")).expect("plant");

    let (train, valid) = loaders(24_000, 16, 4);
    let outcome = VCycle::<Gpt2>::new(
        two_levels(Some(2), Some(1), 3),
        &run,
        Device::flex().autodiff(),
    )
    .expect("driver")
    .resume(fresh_gpt2(), train, valid, quiet_training)
    .expect("resume");
    assert_eq!(outcome.boundaries.len(), 3);
    assert_eq!(outcome.boundaries[0], log[0]);
    assert_eq!(outcome.steps, 9);
    for (d, snap) in earlier.iter().zip(&before) {
        assert_eq!(&snapshot(&run.join(d)), snap, "{d} changed");
    }
    let final_log: Vec<BoundaryRecord> =
        serde_json::from_value(read_json(&run.join("boundaries.json"))).expect("log");
    assert_eq!(final_log, outcome.boundaries);
    assert!(hidden_entries(&checkpoints).is_empty());
    assert!(
        hidden_entries(&run).is_empty(),
        "{:?}",
        hidden_entries(&run)
    );
    Gpt2::load(&checkpoints.join(STOP_IN), &device()).expect("rewritten checkpoint");
}
