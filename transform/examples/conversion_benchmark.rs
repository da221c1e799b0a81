//! Conversion speed and memory: `cargo run --release -p vcycle-transform --example
//! conversion_benchmark [-- [--quick] [--keep] [--cold]]`.
//!
//! Generates synthetic checkpoints under `target/bench` (BERT-Large in f32 and in bf16, and a
//! Llama-style model of about 1.1B parameters in bf16; `--quick`: small models), then, for
//! coalesce, decoalesce and grow, measures in a child process each (the benchmark re-invoking
//! itself) the wall time and peak resident memory (VmHWM, which counts touched pages of
//! memory-mapped inputs) of the conversion and of a plain copy of the same bytes through the
//! same writer, best of five runs each (each run goes through every model in turn), and on
//! the largest tensors the time of the same operator written as dense matrix products. Prints
//! a table with each figure's target and writes the figures to `target/bench/conversion.json`;
//! the generated checkpoints are deleted unless `--keep`.
//! The inputs are read into the page cache before every run: warm-cache figures; with
//! `--cold` (root only) the page cache is dropped before every run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ndarray::Array2;
use safetensors::Dtype;
use serde_json::{Value, json};
use vcycle_transform::execute::{self, Block, Inputs};
use vcycle_transform::fixture::{self, FixtureSpec};
use vcycle_transform::ops::Gather;
use vcycle_transform::plan::{self, DepthOp, TensorPlan};
use vcycle_transform::write::{self, OutputForm};
use vcycle_transform::{
    AlphaRange, ArchChoice, Checkpoint, Dims, Job, Operator, Options, Plan, Target, dtype,
    open_model,
};

/// Hidden first argument of the measuring child process.
const CHILD: &str = "--measure-child";

/// The wall-time target: at most this many times a plain copy of the same bytes.
const COPY_RATIO_LIMIT: f64 = 1.5;
/// The memory target: at most 2 × the largest tensor + this many bytes.
const RSS_ALLOWANCE: u64 = 100_000_000;
/// Runs of each conversion and copy; the fastest counts. Five: on a 2-core virtual machine the
/// same copy varied up to 2.7x between three runs.
const RUNS: usize = 5;

struct Model {
    name: &'static str,
    spec: FixtureSpec,
    /// Sizes of the coalesced model: heads, kv heads, layers.
    small: (usize, usize, usize),
}

fn bert(layers: usize, hidden: usize, heads: usize, vocab: usize, dtype: Dtype) -> FixtureSpec {
    let mut spec = fixture::bert_mlm(7);
    spec.dims = Dims {
        layers,
        hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        ffn: 4 * hidden,
        tied: true,
        fixed: [("vocab", vocab), ("positions", 512), ("token_types", 2)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
    };
    spec.dtype = dtype;
    spec
}

fn llama(
    layers: usize,
    hidden: usize,
    heads: usize,
    kv: usize,
    ffn: usize,
    vocab: usize,
) -> FixtureSpec {
    let mut spec = fixture::llama_lm(11, false);
    spec.dims = Dims {
        layers,
        hidden,
        heads,
        kv_heads: kv,
        head_dim: hidden / heads,
        ffn,
        tied: false,
        fixed: [("vocab", vocab), ("positions", 2048)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
    };
    spec.dtype = Dtype::BF16;
    spec
}

fn models(quick: bool) -> Vec<Model> {
    if quick {
        vec![
            Model {
                name: "bert-mini",
                spec: bert(4, 256, 4, 8192, Dtype::F32),
                small: (2, 2, 2),
            },
            Model {
                name: "bert-mini",
                spec: bert(4, 256, 4, 8192, Dtype::BF16),
                small: (2, 2, 2),
            },
            Model {
                name: "llama-mini",
                spec: llama(4, 512, 8, 2, 1408, 8192),
                small: (4, 1, 2),
            },
        ]
    } else {
        vec![
            Model {
                name: "bert-large",
                spec: bert(24, 1024, 16, 30522, Dtype::F32),
                small: (8, 8, 12),
            },
            Model {
                name: "bert-large",
                spec: bert(24, 1024, 16, 30522, Dtype::BF16),
                small: (8, 8, 12),
            },
            // TinyLlama-1.1B's sizes: 22 layers, hidden 2048, 32 query / 4 key-value heads.
            Model {
                name: "llama-1.1b",
                spec: llama(22, 2048, 32, 4, 5632, 32000),
                small: (16, 2, 11),
            },
        ]
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD) {
        return child(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let keep = args.iter().any(|a| a == "--keep");
    let cache = if args.iter().any(|a| a == "--cold") {
        Cache::Cold
    } else {
        Cache::Warm
    };
    if let Some(unknown) = args
        .iter()
        .find(|a| !matches!(a.as_str(), "--quick" | "--keep" | "--cold"))
    {
        bail!("unknown argument {unknown} (accepted: --quick, --keep, --cold)");
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&root)?;
    let load_at_start = load_average();
    let checkpoints = models(quick)
        .iter()
        .map(|model| Checkpoints::generate(&root, model))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for op in ["coalesce", "decoalesce", "grow"] {
        rows.extend(bench_operation(&root, &checkpoints, op, cache)?);
    }
    for c in &checkpoints {
        c.remove_outputs();
    }
    // Model by model, as the table reads.
    rows.sort_by_key(|r| {
        let model = checkpoints
            .iter()
            .position(|c| r["model"] == c.name && r["dtype"] == c.dtype.as_str());
        let op = ["coalesce", "decoalesce", "grow"]
            .iter()
            .position(|op| r["operation"] == *op);
        (model, op)
    });
    let load_at_end = load_average();
    let machine = machine();
    println!(
        "\n{} CPUs ({}), 1-minute load average {load_at_start} at the start, {load_at_end} at the end;",
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or("")
    );
    println!(
        "{}, outputs written and fsynced; best of {RUNS} runs, each in its own process",
        cache.describe()
    );
    print_table(&rows);
    let report = json!({
        "machine": machine,
        "load_average_1min": {"start": load_at_start, "end": load_at_end},
        "cache": cache.describe(),
        "outputs": "written and fsynced",
        "best_of_runs": RUNS,
        "targets": {
            "wall_vs_copy_at_most": COPY_RATIO_LIMIT,
            "peak_rss_at_most": "2 x largest tensor + 100 MB",
        },
        "rows": rows,
    });
    let json_path = root.join("conversion.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nfigures written to {}", json_path.display());
    if !keep {
        for entry in std::fs::read_dir(&root)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            }
        }
    }
    Ok(())
}

/// The 1-minute load average: other work on the machine slows a conversion (CPU) more than a
/// copy (disk).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model})
}

/// Where the inputs are when a run starts.
#[derive(Clone, Copy)]
enum Cache {
    /// In the page cache: read through before every run.
    Warm,
    /// On disk only: the page cache is dropped before every run (needs root).
    Cold,
}

impl Cache {
    fn describe(self) -> &'static str {
        match self {
            Cache::Warm => "inputs in the page cache (warm)",
            Cache::Cold => "inputs on disk (cold: the page cache dropped before each run)",
        }
    }

    /// Called before each run. Every output is fsynced, so dropping the cache loses nothing.
    fn prepare(self, inputs: &[PathBuf]) -> Result<()> {
        match self {
            Cache::Warm => {
                for dir in inputs {
                    for entry in std::fs::read_dir(dir)? {
                        let path = entry?.path();
                        std::io::copy(&mut File::open(&path)?, &mut std::io::sink())
                            .with_context(|| format!("reading {}", path.display()))?;
                    }
                }
            }
            Cache::Cold => {
                std::fs::write("/proc/sys/vm/drop_caches", "3").context(
                    "--cold drops the page cache: it needs root (writing /proc/sys/vm/drop_caches)",
                )?;
            }
        }
        Ok(())
    }
}

/// One model's checkpoints: the generated one and the conversions' outputs.
struct Checkpoints {
    name: &'static str,
    dtype: String,
    large: PathBuf,
    small: PathBuf,
    decoalesced: PathBuf,
    grown: PathBuf,
    /// The coalesced sizes: heads, kv heads, layers.
    shrink: [String; 3],
}

impl Checkpoints {
    /// Generates the model's checkpoint unless it is there.
    fn generate(root: &Path, model: &Model) -> Result<Self> {
        let dtype = format!("{:?}", model.spec.dtype).to_lowercase();
        let tag = format!("{}-{dtype}", model.name);
        let large = root.join(&tag);
        if !large.join("model.safetensors").exists() {
            eprintln!("generating {tag} ...");
            fixture::write_dir(&model.spec, &large)?;
        }
        let (heads, kv, layers) = model.small;
        Ok(Checkpoints {
            name: model.name,
            dtype,
            small: root.join(format!("{tag}.small")),
            decoalesced: root.join(format!("{tag}.decoalesced")),
            grown: root.join(format!("{tag}.grown")),
            large,
            shrink: [heads.to_string(), kv.to_string(), layers.to_string()],
        })
    }

    /// The inputs and the output of `op`.
    fn operation(&self, op: &str) -> (Vec<PathBuf>, &PathBuf) {
        match op {
            "coalesce" => (vec![self.large.clone()], &self.small),
            "decoalesce" => (vec![self.small.clone()], &self.decoalesced),
            _ => (vec![self.small.clone(), self.large.clone()], &self.grown),
        }
    }

    fn remove_outputs(&self) {
        for dir in [&self.small, &self.decoalesced, &self.grown] {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// The fastest conversion and copy of one operation on one model, and every copy's time.
#[derive(Default)]
struct Runs {
    conversion: Option<Value>,
    copy: Option<Value>,
    copy_times: Vec<f64>,
}

/// Measures `op` on every model: each run converts and copies every model in turn, so that
/// the models meet the same conditions of the machine; disk writes on a shared machine vary
/// from one minute to the next.
fn bench_operation(
    root: &Path,
    models: &[Checkpoints],
    op: &str,
    cache: Cache,
) -> Result<Vec<Value>> {
    let copy_out = root.join("copy.out");
    let mut runs: Vec<Runs> = models.iter().map(|_| Runs::default()).collect();
    for run in 0..RUNS {
        for (m, runs) in models.iter().zip(&mut runs) {
            eprintln!(
                "measuring {op} {}-{} (run {}) ...",
                m.name,
                m.dtype,
                run + 1
            );
            let (inputs, output) = m.operation(op);
            // op, output, heads, kv heads, layers, inputs...
            let child_args = |out: &Path| {
                let mut args: Vec<String> = vec![op.into(), out.display().to_string()];
                args.extend(m.shrink.iter().cloned());
                args.extend(inputs.iter().map(|p| p.display().to_string()));
                args
            };
            let args = child_args(output);
            let copy_args: Vec<String> = std::iter::once("copy".to_string())
                .chain(child_args(&copy_out))
                .collect();
            // Deleting the last run's output is not part of a conversion (it costs a large
            // file's unlink, 0.1 s per GB here): neither run finds one.
            remove(output)?;
            cache.prepare(&inputs)?;
            let c = run_child(&args)?;
            remove(&copy_out)?;
            cache.prepare(&inputs)?;
            let k = run_child(&copy_args)?;
            runs.copy_times.push(seconds(&k));
            runs.conversion = Some(best(runs.conversion.take(), c));
            runs.copy = Some(best(runs.copy.take(), k));
        }
    }
    remove(&copy_out)?;
    let mut rows = Vec::new();
    for (m, runs) in models.iter().zip(runs) {
        let (Some(conversion), Some(copy)) = (runs.conversion, runs.copy) else {
            bail!("no measurement");
        };
        let (inputs, output) = m.operation(op);
        let input_args: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        let [heads, kv, layers] = &m.shrink;
        let dense = dense_comparison(op, &input_args, [heads, kv, layers])?;
        let mut all = inputs.clone();
        all.push(output.clone());
        let largest = largest_tensor(&all)?;
        let in_bytes: u64 = inputs.iter().map(|p| data_bytes(p)).sum::<Result<u64>>()?;
        let out_bytes = data_bytes(output)?;
        let bytes = in_bytes + out_bytes;
        let wall = seconds(&conversion);
        let copy_wall = seconds(&copy);
        let rss = conversion["vm_hwm_bytes"].as_u64().unwrap_or(0);
        let rss_limit = 2 * largest + RSS_ALLOWANCE;
        let slowest_copy = runs.copy_times.iter().copied().fold(0.0, f64::max);
        let row = json!({
            "operation": op,
            "model": m.name,
            "dtype": m.dtype,
            "input_bytes": in_bytes,
            "output_bytes": out_bytes,
            "wall_s": wall,
            "gb_per_s": bytes as f64 / wall / 1e9,
            "copy_wall_s": copy_wall,
            // How much the same copy varied between runs: the noise the ratios carry.
            "copy_slowest_over_fastest": slowest_copy / copy_wall,
            "ratio_to_copy": wall / copy_wall,
            "ratio_to_copy_ok": wall / copy_wall <= COPY_RATIO_LIMIT,
            "peak_rss_bytes": rss,
            "rss_anon_at_end_bytes": conversion["rss_anon_bytes"],
            "copy_peak_rss_bytes": copy["vm_hwm_bytes"],
            "largest_tensor_bytes": largest,
            "rss_limit_bytes": rss_limit,
            "rss_ok": rss <= rss_limit,
            "dense": dense,
        });
        eprintln!("{row}");
        rows.push(row);
    }
    Ok(rows)
}

/// Removes a file or directory, if there is one.
fn remove(path: &Path) -> Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn seconds(v: &Value) -> f64 {
    v["seconds"].as_f64().unwrap_or(f64::NAN)
}

fn best(a: Option<Value>, b: Value) -> Value {
    match a {
        Some(a) if seconds(&a) <= seconds(&b) => a,
        _ => b,
    }
}

fn data_bytes(path: &Path) -> Result<u64> {
    Ok(Checkpoint::open(path)?.data_bytes())
}

fn largest_tensor(paths: &[PathBuf]) -> Result<u64> {
    let mut largest = 0u64;
    for path in paths {
        let checkpoint = Checkpoint::open(path)?;
        for info in checkpoint.tensors().values() {
            let bytes = vcycle_transform::dtype::byte_len(info.dtype, &info.shape).unwrap_or(0);
            largest = largest.max(bytes as u64);
        }
    }
    Ok(largest)
}

fn run_child(args: &[String]) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe).arg(CHILD).args(args).output()?;
    if !out.status.success() {
        bail!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// The conversion `op` of the benchmark: coalesce to `small` sizes, decoalesce back to twice
/// the small model's, or grow with α = 0.5.
fn job(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Job> {
    let options = Options {
        target: target(op, inputs, small)?,
        ..Options::default()
    };
    Ok(match (op, inputs) {
        ("coalesce", [input]) => Job::coalesce(Path::new(input), &options)?,
        ("decoalesce", [input]) => Job::decoalesce(Path::new(input), &options)?,
        ("grow", [small, large]) => Job::grow(Path::new(small), Path::new(large), 0.5, &options)?,
        _ => bail!("bad conversion {op} {inputs:?}"),
    })
}

/// The sizes conversion `op` converts to: the small model's when coalescing, twice the small
/// model's when de-coalescing, the saved large model's (the default) when growing.
fn target(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Target> {
    let [heads, kv, layers] = small;
    Ok(match (op, inputs) {
        ("coalesce", _) => Target {
            heads: Some(heads.parse()?),
            kv_heads: Some(kv.parse()?),
            layers: Some(layers.parse()?),
            ..Target::default()
        },
        ("decoalesce", [input]) => decoalesce_target(input)?,
        _ => Target::default(),
    })
}

/// The measuring child: runs one conversion (or copy) and prints its time and peak memory.
fn child(args: &[String]) -> Result<()> {
    let start = Instant::now();
    match args {
        [copy_op, op, output, heads, kv, layers, inputs @ ..] if copy_op == "copy" => {
            copy(op, inputs, [heads, kv, layers], Path::new(output))?;
        }
        [op, output, heads, kv, layers, inputs @ ..] => {
            job(op, inputs, [heads, kv, layers])?.write(Path::new(output), true)?;
        }
        _ => bail!("bad child arguments {args:?}"),
    }
    let seconds = start.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    println!(
        "{}",
        json!({
            "seconds": seconds,
            "vm_hwm_bytes": field("VmHWM:"),
            "rss_anon_bytes": field("RssAnon:"),
        })
    );
    Ok(())
}

/// The operator on the largest tensors (the largest transformed 2-D tensor, and the largest
/// whose both axes change), timed two ways on one thread each: the streaming executor, and
/// the same operator as dense matrix products, small = M₀·W·M₁ᵀ with averaging, summing,
/// duplicating or splitting matrices M (ndarray `dot` in f32, after the same decoding).
fn dense_comparison(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Value> {
    let job = job(op, inputs, small)?;
    let plan = job.plan();
    let checkpoints = inputs
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(primary) = checkpoints.first() else {
        bail!("no input");
    };
    let exec_inputs = Inputs {
        primary,
        large: checkpoints.get(1),
    };
    let changed = |t: &&TensorPlan, both: bool| {
        let gathered = plan.axis_gathers(t).iter().filter(|g| g.is_some()).count();
        t.shape.len() == 2 && if both { gathered == 2 } else { gathered > 0 }
    };
    let bytes = |t: &&TensorPlan| t.shape.iter().product::<usize>();
    let mut chosen: Vec<&TensorPlan> = Vec::new();
    for both in [false, true] {
        let largest = plan
            .tensors
            .iter()
            .filter(|t| changed(t, both))
            .max_by_key(bytes);
        if let Some(t) = largest
            && !chosen.iter().any(|c| c.name == t.name)
        {
            chosen.push(t);
        }
    }
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (mut streaming, mut dense_s) = (0.0, 0.0);
    for t in &chosen {
        let start = Instant::now();
        let mut streamed = Vec::new();
        one_thread.install(|| {
            execute::stream(plan, t, exec_inputs, &mut |b| {
                streamed.extend_from_slice(b.bytes());
                Ok(())
            })
        })?;
        streaming += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let product = dense(plan, t, exec_inputs)?;
        dense_s += start.elapsed().as_secs_f64();
        if product.len() != streamed.len() {
            bail!(
                "dense {} has {} bytes, streamed {}",
                t.name,
                product.len(),
                streamed.len()
            );
        }
    }
    Ok(json!({
        "tensors": chosen.iter().map(|t| format!("{} {:?}", t.name, t.shape)).collect::<Vec<_>>(),
        "streaming_s": streaming,
        "dense_s": dense_s,
        "dense_ratio": dense_s / streaming,
    }))
}

/// One tensor by dense matrix products.
fn dense(plan: &Plan, t: &TensorPlan, inputs: Inputs<'_>) -> Result<Vec<u8>> {
    let matrix = |name: &str, checkpoint: &Checkpoint| -> Result<Array2<f32>> {
        let info = checkpoint.info(name).context("no such tensor")?;
        let values = checkpoint
            .bytes(name)
            .and_then(|b| dtype::decode(info.dtype, b))
            .context("not a float tensor")?;
        let [rows, cols] = info.shape[..] else {
            bail!("{name} is not 2-D");
        };
        Ok(Array2::from_shape_vec(
            (rows, cols),
            values.iter().map(|&v| v as f32).collect(),
        )?)
    };
    let sources = match t.depth {
        DepthOp::Mean => t.sources.as_slice(),
        _ => t.sources.get(..1).unwrap_or_default(),
    };
    let mut w: Option<Array2<f32>> = None;
    for name in sources {
        let m = matrix(name, inputs.primary)?;
        w = Some(match w {
            Some(sum) => sum + m,
            None => m,
        });
    }
    let mut w = w.context("no source")? / sources.len() as f32;
    let gathers = plan.axis_gathers(t);
    let operator = |g: &Gather| {
        let mut m = Array2::<f32>::zeros((g.output_len(), g.input_len()));
        for i in 0..g.output_len() {
            if let Some((sources, divisor)) = g.source(i) {
                for &j in sources {
                    m[[i, j]] += 1.0 / divisor as f32;
                }
            }
        }
        m
    };
    if let Some(Some(g)) = gathers.first() {
        w = operator(&g.gather).dot(&w);
    }
    if let Some(Some(g)) = gathers.get(1) {
        w = w.dot(&operator(&g.gather).t());
    }
    if let (Some(with), Some(large), Operator::Grow { alpha } | Operator::Interpolate { alpha }) =
        (&t.interpolate_with, inputs.large, plan.operator)
    {
        let alpha = alpha as f32;
        w = matrix(with, large)? * (1.0 - alpha) + w * alpha;
    }
    let values: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    dtype::encode(t.dtype, &values).context("not a float dtype")
}

/// De-coalescing the small model back to the large one's sizes: twice the heads and layers of
/// the small model (the benchmark's models halve both).
fn decoalesce_target(input: &str) -> Result<Target> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(input).join("config.json"),
    )?)?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| config.get(*k).and_then(Value::as_u64))
            .map(|n| n as usize)
    };
    let heads = get(&["num_attention_heads"]).context("no heads in config")?;
    let kv = get(&["num_key_value_heads"]).unwrap_or(heads);
    let layers = get(&["num_hidden_layers"]).context("no layers in config")?;
    Ok(Target {
        heads: Some(2 * heads),
        kv_heads: Some(2 * kv),
        layers: Some(2 * layers),
        ..Target::default()
    })
}

/// The conversion `op`'s plan alone: what [`job`] plans, without reading tensor data.
fn plan_only(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Plan> {
    let target = target(op, inputs, small)?;
    let arch = ArchChoice::default();
    Ok(match (op, inputs) {
        ("coalesce", [input]) => {
            let (checkpoint, anatomy) = open_model(Path::new(input), &arch)?;
            plan::plan_resize(&checkpoint, &anatomy, &target, true)?
        }
        ("decoalesce", [input]) => {
            let (checkpoint, anatomy) = open_model(Path::new(input), &arch)?;
            plan::plan_resize(&checkpoint, &anatomy, &target, false)?
        }
        ("grow", [small, large]) => {
            let (small, small_anatomy) = open_model(Path::new(small), &arch)?;
            let (large, large_anatomy) = open_model(Path::new(large), &arch)?;
            plan::plan_grow(
                &small,
                &small_anatomy,
                &large,
                &large_anatomy,
                &target,
                0.5,
                AlphaRange::Interpolate,
            )?
        }
        _ => bail!("bad conversion {op} {inputs:?}"),
    })
}

/// A plain copy of the same bytes through the conversion's own writer: reads every input
/// safetensors file and writes what it read as the conversion's output tensors (the same
/// header, the same writer and fsync; the inputs are read again from the start when the output
/// is larger), so the ratio to it is what computing the values costs.
fn copy(op: &str, inputs: &[String], small: [&String; 3], output: &Path) -> Result<()> {
    let plan = plan_only(op, inputs, small)?;
    let mut files = Vec::new();
    for input in inputs {
        for entry in std::fs::read_dir(input)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                files.push(path);
            }
        }
    }
    files.sort();
    let replay = Mutex::new(Replay::new(files)?);
    let form = OutputForm::Directory {
        config: None,
        extra_files: Vec::new(),
        shard_size: None,
    };
    write::write_output(
        output,
        &write::OutputPolicy::new(&[], true)?,
        &form,
        &plan.tensors,
        &BTreeMap::new(),
        &[],
        &|t, sink| {
            let mut replay = replay
                .lock()
                .map_err(|_| vcycle_transform::Error::Incompatible {
                    tensor: t.name.clone(),
                    reason: "the reader panicked".into(),
                })?;
            let mut left = dtype::byte_len(t.dtype, &t.shape).unwrap_or(0);
            let mut block = Block::default();
            while left > 0 {
                replay.next(left, &mut block)?;
                left -= block.bytes().len();
                sink(&mut block)?;
            }
            Ok(())
        },
    )?;
    let mut replay = replay
        .into_inner()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    replay.read_to_end()?;
    Ok(())
}

/// The bytes of a list of files, in order, read in blocks, from the start again after the last.
struct Replay {
    files: Vec<PathBuf>,
    current: usize,
    file: File,
    wrapped: bool,
}

impl Replay {
    /// The executor's block size.
    const BLOCK: usize = 4 << 20;

    fn new(files: Vec<PathBuf>) -> Result<Self> {
        let first = files.first().context("no input file")?;
        Ok(Replay {
            file: File::open(first)?,
            files,
            current: 0,
            wrapped: false,
        })
    }

    /// Up to `max` bytes of the next block, into `block` (reused as the executor reuses its
    /// blocks).
    fn next(&mut self, max: usize, block: &mut Block) -> vcycle_transform::Result<()> {
        let len = max.min(Self::BLOCK);
        loop {
            let n = self.read(block.fill(len))?;
            if n > 0 {
                block.fill(n);
                return Ok(());
            }
            self.open_next()?;
        }
    }

    /// Reads what the copy has not read yet of the inputs: every input byte is read.
    fn read_to_end(&mut self) -> vcycle_transform::Result<()> {
        let mut block = vec![0; Self::BLOCK];
        while !self.wrapped {
            if self.read(&mut block)? == 0 {
                self.open_next()?;
            }
        }
        Ok(())
    }

    fn read(&mut self, block: &mut [u8]) -> vcycle_transform::Result<usize> {
        self.file
            .read(block)
            .map_err(|source| vcycle_transform::Error::Io {
                path: self.files[self.current].clone(),
                source,
            })
    }

    fn open_next(&mut self) -> vcycle_transform::Result<()> {
        self.current = (self.current + 1) % self.files.len();
        self.wrapped |= self.current == 0;
        let path = &self.files[self.current];
        self.file = File::open(path).map_err(|source| vcycle_transform::Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(())
    }
}

fn print_table(rows: &[Value]) {
    println!(
        "\n{:<10} {:<10} {:<5} {:>9} {:>6} {:>5} {:>6} {:>9} {:>12} {:>7} {:>12} {:>12}",
        "operation",
        "model",
        "dtype",
        "in+out GB",
        "wall s",
        "GB/s",
        "copy s",
        "copy max",
        "vs copy",
        "peak MB",
        "RSS limit MB",
        "dense/ours",
    );
    println!(
        "{:>57} {:>12} {:>20} {:>12}",
        "(/ copy s)", "(target <= 1.5)", "(2 x largest + 100)", "(1 thread)"
    );
    for r in rows {
        let gb = (r["input_bytes"].as_u64().unwrap_or(0) + r["output_bytes"].as_u64().unwrap_or(0))
            as f64
            / 1e9;
        let verdict = |ok: &Value| {
            if ok.as_bool() == Some(true) {
                "ok"
            } else {
                "FAIL"
            }
        };
        println!(
            "{:<10} {:<10} {:<5} {:>9.2} {:>6.2} {:>5.2} {:>6.2} {:>8.1}x {:>7.2} {:<4} {:>7.0} {:>7.0} {:<4} {:>11.1}x",
            r["operation"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            gb,
            r["wall_s"].as_f64().unwrap_or(f64::NAN),
            r["gb_per_s"].as_f64().unwrap_or(f64::NAN),
            r["copy_wall_s"].as_f64().unwrap_or(f64::NAN),
            r["copy_slowest_over_fastest"].as_f64().unwrap_or(f64::NAN),
            r["ratio_to_copy"].as_f64().unwrap_or(f64::NAN),
            verdict(&r["ratio_to_copy_ok"]),
            r["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            r["rss_limit_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            verdict(&r["rss_ok"]),
            r["dense"]["dense_ratio"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "\ndense/ours: time of the dense-matrix operator over the streaming executor's on these tensors:"
    );
    for r in rows {
        println!(
            "  {:<10} {:<10} {:<5} {}",
            r["operation"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            r["dense"]["tensors"]
                .as_array()
                .map(|t| t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
}
