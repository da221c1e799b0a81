//! Shared helpers: a private sandbox directory per test, running the `vcycle` binary, and
//! reading, writing and comparing safetensors checkpoints independently of the library.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// The compiled `vcycle` binary.
pub const VCYCLE: &str = env!("CARGO_BIN_EXE_vcycle");

/// The directory holding the bundled fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures"))
}

/// The absolute path of a bundled fixture directory (`gpt2-tiny`, `bert-tiny`), as a string
/// so it can sit in an argument list next to plain `&str`s.
pub fn fixture(name: &str) -> String {
    let path = fixtures_dir().join(name);
    assert!(path.is_dir(), "fixture {} is missing", path.display());
    path.to_str()
        .expect("fixture paths are valid UTF-8")
        .to_string()
}

/// Both fixtures, for tests that must hold for every built-in architecture.
pub const FIXTURES: [&str; 2] = ["gpt2-tiny", "bert-tiny"];

/// The outcome of one `vcycle` run.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 when the process was killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub command: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`vcycle {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `vcycle` with `args` in `cwd`.
pub fn run_in<I, S>(cwd: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = Command::new(VCYCLE)
        .args(&args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .output()
        .expect("the vcycle binary can be started");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// A temporary working directory owned by one test; `vcycle` runs inside it, so outputs can
/// be named by relative paths.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("vcycle-e2e-")
                .tempdir()
                .expect("a temporary directory can be created"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the sandbox.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Runs `vcycle` in the sandbox, whatever its outcome.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_in(self.root(), args)
    }

    /// Runs `vcycle` and requires exit code 0.
    pub fn ok<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.run(args);
        assert_eq!(run.code, 0, "expected success:\n{run}");
        run
    }

    /// Copies a fixture directory (every file in it) to `dest` inside the sandbox.
    pub fn copy_fixture(&self, name: &str, dest: &str) -> PathBuf {
        let to = self.path(dest);
        copy_dir(&fixtures_dir().join(name), &to);
        to
    }

    /// The names of the sandbox's top-level entries, sorted.
    pub fn entries(&self) -> Vec<String> {
        entries(self.root())
    }
}

/// Copies the files of `from` (not recursively) into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("the destination directory can be created");
    for entry in std::fs::read_dir(from).expect("the source directory can be read") {
        let entry = entry.expect("a directory entry can be read");
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("a file can be copied");
        }
    }
}

/// The sorted names of the entries of a directory.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            e.expect("a directory entry can be read")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Asserts that a failed run left nothing behind: neither `output` nor any `.vcycle-*`
/// temporary in the output's parent directory.
pub fn assert_nothing_written(output: &Path) {
    assert!(
        output.symlink_metadata().is_err(),
        "{} was left behind by a failed run",
        output.display()
    );
    let parent = output.parent().expect("an output path has a parent");
    let leftovers: Vec<String> = entries(parent)
        .into_iter()
        .filter(|n| n.starts_with(".vcycle-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left in {}: {leftovers:?}",
        parent.display()
    );
}

/// One tensor as stored: dtype, shape and raw little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// The values as f64 (float dtypes only).
    pub fn values(&self) -> Vec<f64> {
        decode(self.dtype, &self.data)
    }

    pub fn is_float(&self) -> bool {
        matches!(
            self.dtype,
            Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64
        )
    }
}

/// A checkpoint's tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;

/// Reads one safetensors file: its tensors and its `__metadata__`.
pub fn load_file(path: &Path) -> (Tensors, HashMap<String, String>) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()));
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .unwrap_or_else(|e| panic!("{} has no readable header: {e}", path.display()));
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                Tensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                },
            )
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

/// Reads a checkpoint: a `.safetensors` file, or a model directory with `model.safetensors`
/// or shards listed in `model.safetensors.index.json`.
pub fn load(path: &Path) -> Tensors {
    if path.is_file() {
        return load_file(path).0;
    }
    let index = path.join("model.safetensors.index.json");
    if index.exists() {
        let index = read_json(&index);
        let weight_map = index["weight_map"]
            .as_object()
            .expect("the index has a weight_map object");
        let mut files: Vec<&str> = weight_map
            .values()
            .map(|v| v.as_str().expect("weight_map values are file names"))
            .collect();
        files.sort_unstable();
        files.dedup();
        let mut all = Tensors::new();
        for file in files {
            for (name, tensor) in load_file(&path.join(file)).0 {
                assert!(
                    all.insert(name.clone(), tensor).is_none(),
                    "tensor {name} is stored in two shards"
                );
            }
        }
        return all;
    }
    load_file(&path.join("model.safetensors")).0
}

/// Writes tensors (and optional metadata) to a safetensors file.
pub fn save(path: &Path, tensors: &Tensors, metadata: Option<HashMap<String, String>>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .unwrap_or_else(|e| panic!("tensor {name} has inconsistent bytes: {e}"));
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub fn write_json(path: &Path, value: &Value) {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serialises");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Decodes little-endian float bytes to f64.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => panic!("{other:?} is not a float dtype"),
    }
}

/// Encodes f64 values as little-endian bytes of a float dtype (round to nearest).
pub fn encode(dtype: Dtype, values: &[f64]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        Dtype::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .collect(),
        other => panic!("{other:?} is not a float dtype"),
    }
}

/// Asserts that both checkpoints hold the same tensor names and, per tensor, the same dtype,
/// shape and bytes.
pub fn assert_tensors_eq(actual: &Tensors, expected: &Tensors, what: &str) {
    assert_same_names_and_shapes(actual, expected, what);
    for (name, e) in expected {
        let a = &actual[name];
        if a.data != e.data {
            let index = a
                .data
                .iter()
                .zip(&e.data)
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            let element_size = (e.data.len() / e.shape.iter().product::<usize>().max(1)).max(1);
            let element = index / element_size;
            panic!("{what}: tensor {name} differs in its bytes, first at element {element}");
        }
    }
}

/// Asserts equal tensor names, and per tensor equal dtypes and shapes.
pub fn assert_same_names_and_shapes(actual: &Tensors, expected: &Tensors, what: &str) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: tensor names differ; missing {missing:?}, unexpected {extra:?}"
    );
    for (name, e) in expected {
        let a = &actual[name];
        assert_eq!(a.dtype, e.dtype, "{what}: dtype of {name}");
        assert_eq!(a.shape, e.shape, "{what}: shape of {name}");
    }
}

/// Distance in units in the last place between two f32 values (by their ordered bit
/// patterns).
pub fn ulps_f32(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits & 0x8000_0000 != 0 {
            0x8000_0000 - bits
        } else {
            bits
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Asserts equal names, dtypes and shapes, and every f32 element within `max_ulps`; other
/// dtypes must match byte for byte. Returns the largest distance seen.
pub fn assert_within_ulps(actual: &Tensors, expected: &Tensors, max_ulps: u64, what: &str) -> u64 {
    assert_same_names_and_shapes(actual, expected, what);
    let mut worst = 0;
    for (name, e) in expected {
        let a = &actual[name];
        if e.dtype != Dtype::F32 {
            assert_eq!(a.data, e.data, "{what}: bytes of {name}");
            continue;
        }
        for (i, (x, y)) in a
            .data
            .chunks_exact(4)
            .zip(e.data.chunks_exact(4))
            .enumerate()
        {
            let x = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            let y = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
            let d = ulps_f32(x, y);
            assert!(
                d <= max_ulps,
                "{what}: {name}[{i}] is {x:e}, expected {y:e} ({d} ulps apart, at most {max_ulps} allowed)"
            );
            worst = worst.max(d);
        }
    }
    worst
}

/// Asserts that stderr contains every needle, showing the whole run otherwise.
pub fn assert_mentions(run: &Run, needles: &[&str]) {
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr does not mention {needle:?}:\n{run}"
        );
    }
}
