//! The measurements: each conversion and each copy run in a child process (the benchmark
//! re-invoking itself), its wall time and peak memory, best of the runs, one row per operation
//! and model.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use vcycle_transform::Checkpoint;

use crate::cache::Cache;
use crate::conversion::job;
use crate::copy::copy;
use crate::dense::dense_comparison;
use crate::models::Checkpoints;
use crate::{COPY_RATIO_LIMIT, RSS_ALLOWANCE, RUNS};

/// Hidden first argument of the measuring child process.
pub const CHILD: &str = "--measure-child";

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
pub fn bench_operation(
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
            // Deleting an earlier output is not part of a conversion (it costs a large file's
            // unlink, 0.1 s per GB here): neither child finds one, and the deletions are
            // committed to the disk (`sync`) before either starts. The two children take turns
            // at going first: on a virtual machine a child in one position often took twice as
            // long as in the other (the per-child times printed below; docs/performance.md,
            // "The benchmark"). (The conversion's output stays: a later operation reads it.)
            remove(output)?;
            remove(&copy_out)?;
            sync()?;
            let measure = |args: &[String]| {
                cache.prepare(&inputs)?;
                run_child(args)
            };
            let (c, k) = if run % 2 == 0 {
                let c = measure(&args)?;
                (c, measure(&copy_args)?)
            } else {
                let k = measure(&copy_args)?;
                (measure(&args)?, k)
            };
            eprintln!("  {:.2} s, copy {:.2} s", seconds(&c), seconds(&k));
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

/// Commits every file system's pending changes to the disk (`sync`).
fn sync() -> Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
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

/// The measuring child: runs one conversion (or copy) and prints its time and peak memory.
pub fn child(args: &[String]) -> Result<()> {
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
