//! What the V-cycle saves: a byte-level GPT-2 trained on the Rust Book (data/rust-book.txt)
//! as a plain baseline and as V-cycles of 2 and 3 levels with the baseline's training FLOPs,
//! over several seeds; the FLOPs and wall time each needs to reach the baseline's final
//! validation loss, the sweep of the knobs that matter, plots and raw numbers.
//!
//! ```sh
//! cargo run --release -p vcycle-bench -- --quick
//! cargo run --release -p vcycle-bench -- --sweep --out docs/cost-benchmark
//! cargo run --release -p vcycle-bench -- --tuned --budget 4 --out docs/cost-benchmark
//! cargo run --release -p vcycle-bench -- --tuned --task bert --out docs/cost-benchmark
//! ```
//!
//! `--tuned` is the comparison against the baseline a practitioner would run: warm-up and
//! cosine decay to 10%, the peak learning rate of every variant (baseline and V-cycles alike)
//! chosen by a sweep on one seed, the best rate then run on the other seeds.
//!
//! Each run is a child process (this program again, with `--child`), so runs can go in
//! parallel (`--jobs`) and none inherits another's allocator or thread state.

mod plan;
mod plot;
mod report;
mod run;
mod study;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use vcycle_plugin::device;

use crate::plan::{Scale, Size, Task, Variant};
use crate::report::{Report, Summary};
use crate::run::RunResult;

#[derive(Parser)]
#[command(about = "Training cost of the V-cycle against a plain baseline (FLOPs and wall time)")]
struct Args {
    /// A short budget (a few minutes) instead of the full one.
    #[arg(long)]
    quick: bool,
    /// The model and batch: `small` for CPUs, `gpu` for an accelerator (results under gpu-…
    /// folders).
    #[arg(long, value_enum, default_value_t = Size::Small)]
    scale: Size,
    /// With --tuned: leave out the constant-rate rows (a shorter run, e.g. on an accelerator).
    #[arg(long)]
    no_constant: bool,
    /// Seeds of every headline run.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// Also run the sweep (α, bottom share, learning rate after growing, moments, groups,
    /// depth init); with --tuned, around the best-rate 2-level cycle.
    #[arg(long)]
    sweep: bool,
    /// Seeds of every sweep run.
    #[arg(long, default_value_t = 1)]
    sweep_seeds: u64,
    /// Only these knobs of the sweep, comma-separated, named as in its table (e.g. "alpha
    /// 0.25,up lr x2"): to give the promising ones more seeds.
    #[arg(long, value_delimiter = ',')]
    sweep_only: Vec<String>,
    /// The tuned comparison (cosine decay, learning rates swept) instead of the headline.
    #[arg(long)]
    tuned: bool,
    /// The recipe study: cosine and warmup-stable-decay baselines against the V-cycle and late
    /// growth (results under study-Nx/).
    #[arg(long, conflicts_with = "tuned")]
    study: bool,
    /// Multiples of the default learning rates that --study tries for its recipes, on seed 0
    /// (the baselines try --lr-factors).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0, 2.0, 0.5])]
    recipe_lr_factors: Vec<f64>,
    /// The V-cycles --tuned compares with the baseline, by their number of levels.
    #[arg(long, value_delimiter = ',', default_values_t = [2, 3])]
    levels: Vec<usize>,
    /// Multiples of the default learning rates that --tuned tries, on seed 0.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 1.0, 2.0, 4.0])]
    lr_factors: Vec<f64>,
    /// The budget as a multiple of the default (600 baseline steps): steps, validation
    /// interval and warm-up scale with it. Results go to tuned-Nx/ (with --tuned) or
    /// constant-Nx/ under --out and --work.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    budget: u64,
    /// Where results.json, table.md and the plots go.
    #[arg(long, default_value = "target/cost-benchmark")]
    out: PathBuf,
    /// Where the runs' checkpoints and logs go.
    #[arg(long, default_value = "target/cost-benchmark-work")]
    work: PathBuf,
    /// Runs in parallel (child processes; give each its own cores, e.g. RAYON_NUM_THREADS=1
    /// with --jobs equal to the cores).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Keep the results of runs already in --out's runs/ (same variant and seed) instead of
    /// running them again: to finish an interrupted benchmark or to re-plot.
    #[arg(long)]
    reuse: bool,
    /// Run nothing: report the finished runs in --out's runs/ (a partial benchmark's figures;
    /// the runs not finished are left out, and table.md says so).
    #[arg(long)]
    report_only: bool,
    /// The model and objective: a GPT-2 predicting the next byte, or a BERT predicting 15% of
    /// the bytes, masked (results under bert-… folders).
    #[arg(long, value_enum, default_value_t = Task::Gpt)]
    task: Task,
    /// cpu, tch-cpu, tch-cuda:N (feature tch), cuda:N (feature cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/rust-book.txt"))]
    corpus: PathBuf,
    /// Internal: run one variant (JSON) and write its result to --child-out.
    #[arg(long, hide = true, requires = "child_out")]
    child: Option<String>,
    #[arg(long, hide = true)]
    child_seed: Option<u64>,
    #[arg(long, hide = true)]
    child_out: Option<PathBuf>,
}

impl Args {
    fn scale(&self) -> Scale {
        let scale = Scale::of(self.scale);
        let scale = if self.quick { scale.quick() } else { scale };
        Scale {
            task: self.task,
            ..scale.times(self.budget as usize)
        }
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let scale = args.scale();
    if let (Some(variant), Some(out)) = (&args.child, &args.child_out) {
        let variant: Variant = serde_json::from_str(variant).context("--child")?;
        let device = device::parse(&args.device)?;
        let result = run::run(
            &variant,
            &scale,
            args.child_seed.unwrap_or(0),
            &args.corpus,
            &device,
            &args.work,
        )?;
        std::fs::write(out, serde_json::to_string(&result)?)
            .with_context(|| format!("writing {}", out.display()))?;
        return Ok(());
    }

    if args.child.is_none() {
        let protocol = match () {
            _ if args.study => "study",
            _ if args.tuned => "tuned",
            _ => "constant",
        };
        let sub = match args.task {
            Task::Gpt => format!("{protocol}-{}x", args.budget),
            Task::Bert => format!("bert-{protocol}-{}x", args.budget),
        };
        let sub = match args.scale {
            Size::Small => sub,
            Size::Gpu => format!("gpu-{sub}"),
        };
        args.work = args.work.join(&sub);
        args.out = args.out.join(&sub);
    }
    if args.tuned {
        return tuned(&args, &scale);
    }
    if args.study {
        return study::study(&args, &scale);
    }
    let headline = plan::headline();
    let sweep = if args.sweep {
        plan::only_knobs(plan::sweep(), &args.sweep_only)?
    } else {
        Vec::new()
    };
    print_budgets(headline.iter().chain(&sweep), &scale)?;
    let mut jobs: Vec<(Variant, u64)> = Vec::new();
    for seed in 0..args.seeds {
        jobs.extend(headline.iter().map(|v| (v.clone(), seed)));
    }
    for seed in 0..args.sweep_seeds.min(args.seeds) {
        jobs.extend(sweep.iter().map(|v| (v.clone(), seed)));
    }
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("creating {}", args.work.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let runs = run_all(&args, &jobs)?;
    let variants: Vec<Variant> = headline.iter().chain(&sweep).cloned().collect();
    let summaries = report::summarize(&variants, &runs, &headline[0]);
    write_outputs(&args, &scale, &headline, &summaries, &runs, "")
}

fn print_budgets<'a>(variants: impl Iterator<Item = &'a Variant>, scale: &Scale) -> Result<()> {
    for v in variants {
        let b = v.budget(scale)?;
        println!(
            "{:<30} steps: down {:>5} × {}, bottom {:>6}, up {:>5} × {} | {:.3e} FLOPs",
            v.name,
            b.down,
            v.levels.saturating_sub(1),
            b.bottom,
            b.up,
            v.levels.saturating_sub(1),
            b.flops
        );
    }
    Ok(())
}

/// The tuned comparison: every learning-rate factor of every tuned variant on seed 0, then
/// each variant's best factor (lowest final validation loss) on the other seeds; the fixed
/// constant-rate variants on every seed. Ratios are against the tuned baseline.
fn tuned(args: &Args, scale: &Scale) -> Result<()> {
    if args.levels.iter().any(|&k| k < 2) {
        bail!("--levels: a V-cycle has at least 2 levels");
    }
    let (tuned, mut fixed) = plan::tuned(&args.levels);
    if args.no_constant {
        fixed.clear();
    }
    if args.lr_factors.is_empty() || args.lr_factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
        bail!("--lr-factors must be positive numbers");
    }
    // Factor by factor, so that an interrupted sweep holds comparable runs of every variant.
    let trials: Vec<Variant> = args
        .lr_factors
        .iter()
        .flat_map(|&f| tuned.iter().map(move |v| v.lr_times(f)))
        .collect();
    print_budgets(trials.iter().chain(&fixed), scale)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut jobs: Vec<(Variant, u64)> = trials.iter().map(|v| (v.clone(), 0)).collect();
    jobs.extend(fixed.iter().map(|v| (v.clone(), 0)));
    let first = run_all(args, &jobs)?;
    let mut best = Vec::new();
    let mut tuning = String::from(
        "| run | lr factor | peak lr (full / smaller) | final valid loss, seed 0 |\n|---|---|---|---|\n",
    );
    for v in &tuned {
        // Every trial has its run, except those --report-only leaves out.
        let mut candidates: Vec<(f64, &RunResult)> = args
            .lr_factors
            .iter()
            .filter_map(|&f| {
                let trial = v.lr_times(f);
                first
                    .iter()
                    .find(|r| r.variant == trial)
                    .map(|run| (f, run))
            })
            .collect();
        if candidates.is_empty() {
            bail!("no finished tuning run of {}", v.name);
        }
        candidates.sort_by(|a, b| a.1.final_loss.total_cmp(&b.1.final_loss));
        for (f, run) in &candidates {
            tuning.push_str(&format!(
                "| {} | {f} | {:.1e} / {:.1e} | {:.4} |\n",
                v.name, run.variant.lr, run.variant.small_lr, run.final_loss
            ));
        }
        let (f, _) = candidates[0];
        let edge = f == args.lr_factors.iter().copied().fold(f64::NAN, f64::min)
            || f == args.lr_factors.iter().copied().fold(f64::NAN, f64::max);
        if edge {
            println!(
                "note: the best factor of {} is the sweep's edge ({f}): a wider sweep may do better",
                v.name
            );
        }
        best.push(v.lr_times(f));
    }
    // The knobs, each changed alone from the best-rate 2-level cycle (at that rate: the
    // knobs are not tuned again).
    let sweep = match best.iter().find(|v| v.levels == 2) {
        Some(base) if args.sweep => plan::only_knobs(plan::sweep_from(base), &args.sweep_only)?,
        _ => Vec::new(),
    };
    print_budgets(sweep.iter(), scale)?;
    let mut jobs: Vec<(Variant, u64)> = Vec::new();
    for seed in 0..args.seeds {
        jobs.extend(best.iter().map(|v| (v.clone(), seed)));
        jobs.extend(fixed.iter().map(|v| (v.clone(), seed)));
    }
    for seed in 0..args.sweep_seeds.min(args.seeds) {
        jobs.extend(sweep.iter().map(|v| (v.clone(), seed)));
    }
    // Seed 0's runs of the best factors and the fixed variants ran with the sweep.
    let ran = |v: &Variant, seed: u64| first.iter().any(|r| &r.variant == v && r.seed == seed);
    let fresh: Vec<(Variant, u64)> = jobs
        .iter()
        .filter(|(v, seed)| !ran(v, *seed))
        .cloned()
        .collect();
    let mut runs = run_all(args, &fresh)?;
    runs.extend(
        first
            .iter()
            .filter(|r| {
                jobs.iter()
                    .any(|(v, seed)| &r.variant == v && r.seed == *seed)
            })
            .cloned(),
    );
    let variants: Vec<Variant> = best.iter().chain(&fixed).chain(&sweep).cloned().collect();
    let summaries = report::summarize(&variants, &runs, &best[0]);
    println!("\n{tuning}");
    // results.json keeps every run, the tuning runs too.
    let mut all = runs.clone();
    all.extend(first.iter().filter(|r| !runs.contains(r)).cloned());
    // The plots show the compared variants; the sweep's are in the table.
    let plotted = &variants[..best.len() + fixed.len()];
    let extra = format!("Learning-rate sweep (seed 0):\n\n{tuning}");
    write_outputs(args, scale, plotted, &summaries, &all, &extra)?;
    report::write_trend(args.out.parent().unwrap_or(&args.out))
}

/// Runs every job as a child process, `--jobs` at a time; results in job order.
fn run_all(args: &Args, jobs: &[(Variant, u64)]) -> Result<Vec<RunResult>> {
    if args.report_only {
        return Ok(finished(args, jobs));
    }
    let started = Instant::now();
    let runs = run_jobs(args, jobs)?;
    println!(
        "{} runs in {:.0} s ({} in parallel)",
        runs.len(),
        started.elapsed().as_secs_f64(),
        args.jobs
    );
    Ok(runs)
}

/// Where a job's result is kept.
fn result_path(args: &Args, variant: &Variant, seed: u64) -> PathBuf {
    args.out
        .join("runs")
        .join(format!("{}-seed{seed}.json", variant.slug()))
}

/// The kept result of a job, if it is that job's (same variant and seed).
fn kept(args: &Args, variant: &Variant, seed: u64) -> Option<RunResult> {
    read_result(&result_path(args, variant, seed))
        .ok()
        .filter(|r| &r.variant == variant && r.seed == seed)
}

/// The results of the jobs already finished, in job order.
fn finished(args: &Args, jobs: &[(Variant, u64)]) -> Vec<RunResult> {
    jobs.iter()
        .filter_map(|(v, seed)| kept(args, v, *seed))
        .collect()
}

fn run_jobs(args: &Args, jobs: &[(Variant, u64)]) -> Result<Vec<RunResult>> {
    let exe = std::env::current_exe().context("locating this program")?;
    let logs = args.work.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // Each finished run's result sits beside the outputs, so a benchmark's partial results can
    // be kept (committed) and finished later with --reuse.
    let results = args.out.join("runs");
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let result_path = |v: &Variant, seed: u64| result_path(args, v, seed);
    let mut pending = jobs
        .iter()
        .enumerate()
        .filter(|(_, (v, seed))| !(args.reuse && kept(args, v, *seed).is_some()));
    let mut running: Vec<(usize, Child, Instant)> = Vec::new();
    let mut done = 0;
    loop {
        while running.len() < args.jobs.max(1) {
            let Some((i, (variant, seed))) = pending.next() else {
                break;
            };
            let log =
                std::fs::File::create(logs.join(format!("{}-seed{seed}.log", variant.slug())))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("--child")
                .arg(serde_json::to_string(variant)?)
                .arg("--child-seed")
                .arg(seed.to_string())
                .arg("--child-out")
                .arg(result_path(variant, *seed))
                .arg("--device")
                .arg(&args.device)
                .arg("--corpus")
                .arg(&args.corpus)
                .arg("--work")
                .arg(&args.work)
                .arg("--budget")
                .arg(args.budget.to_string())
                .arg("--task")
                .arg(match args.task {
                    Task::Gpt => "gpt",
                    Task::Bert => "bert",
                })
                .stdout(log.try_clone()?)
                .stderr(log);
            if args.quick {
                cmd.arg("--quick");
            }
            if args.scale == Size::Gpu {
                cmd.args(["--scale", "gpu"]);
            }
            running.push((i, cmd.spawn().context("starting a run")?, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for (i, mut child, started) in running {
            match child.try_wait()? {
                None => still.push((i, child, started)),
                Some(status) => {
                    let (variant, seed) = &jobs[i];
                    if !status.success() {
                        bail!(
                            "run {} seed {seed} failed ({status}); its log: {}",
                            variant.name,
                            logs.join(format!("{}-seed{seed}.log", variant.slug()))
                                .display()
                        );
                    }
                    done += 1;
                    let result = read_result(&result_path(variant, *seed))?;
                    println!(
                        "[{done}/{}] {:<22} seed {seed}: final valid loss {:.4}, {:.3e} FLOPs, {:.0} s training ({:.0} s with validation)",
                        jobs.len(),
                        variant.name,
                        result.final_loss,
                        result.flops,
                        result.seconds,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }
        running = still;
    }
    jobs.iter()
        .map(|(v, seed)| read_result(&result_path(v, *seed)))
        .collect()
}

fn read_result(path: &Path) -> Result<RunResult> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write_outputs(
    args: &Args,
    scale: &Scale,
    headline: &[Variant],
    summaries: &[Summary],
    runs: &[RunResult],
    extra: &str,
) -> Result<()> {
    let table = report::table(summaries);
    println!("\n{table}");
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let corpus = args.corpus.file_name().map_or_else(
        || args.corpus.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let report = Report {
        scale,
        corpus: &corpus,
        device: &args.device,
        threads,
        summaries,
        runs,
    };
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let md = args.out.join("table.md");
    let mut text = if extra.is_empty() {
        table
    } else {
        format!("{table}\n{extra}")
    };
    if args.report_only {
        text = format!(
            "Partial: the finished runs only (`--report-only`); the runs not finished are left out.\n\n{text}"
        );
    }
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;

    plot::register_font()?;
    let names: Vec<String> = headline.iter().map(|v| v.name.clone()).collect();
    let headline_runs: Vec<RunResult> = runs
        .iter()
        .filter(|r| names.contains(&r.variant.name))
        .cloned()
        .collect();
    let target = report::Spread::of(
        &runs
            .iter()
            .filter(|r| r.variant == headline[0])
            .map(|r| r.final_loss)
            .collect::<Vec<_>>(),
    )
    .map(|s| s.mean);
    let what = format!(
        "{} {}x{} heads, width {}, {} baseline steps, {} seeds",
        scale.task.model_name(),
        scale.layers,
        scale.heads,
        scale.hidden,
        scale.baseline_steps,
        args.seeds
    );
    plot::plot(
        &headline_runs,
        &names,
        plot::Axis::Flops,
        target,
        &format!("Validation loss vs training FLOPs ({what})"),
        &args.out.join("loss_vs_flops"),
    )?;
    plot::plot(
        &headline_runs,
        &names,
        plot::Axis::Seconds,
        target,
        &format!("Validation loss vs wall time ({what})"),
        &args.out.join("loss_vs_time"),
    )?;
    println!(
        "wrote {}, {}, loss_vs_flops.{{png,svg}}, loss_vs_time.{{png,svg}} in {}",
        json.display(),
        md.display(),
        args.out.display()
    );
    Ok(())
}
