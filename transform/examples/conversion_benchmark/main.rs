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

mod cache;
mod conversion;
mod copy;
mod dense;
mod measure;
mod models;
mod table;

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::cache::Cache;
use crate::measure::{CHILD, bench_operation, child};
use crate::models::{Checkpoints, models};
use crate::table::print_table;

/// The wall-time target: at most this many times a plain copy of the same bytes.
const COPY_RATIO_LIMIT: f64 = 1.5;
/// The memory target: at most 2 × the largest tensor + this many bytes.
const RSS_ALLOWANCE: u64 = 100_000_000;
/// Runs of each conversion and copy; the fastest counts. Five: on a 2-core virtual machine the
/// same copy varied up to 2.7x between three runs.
const RUNS: usize = 5;

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
