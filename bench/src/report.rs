//! From runs to the headline: FLOPs and wall time each variant needs to reach the baseline's
//! final validation loss, as ratios to the baseline's, paired by seed, mean and spread.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use serde::Serialize;

use crate::plan::{self, Scale, Task, Variant};
use crate::plot;
use crate::run::{Point, RunResult};

/// A variant's figures over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub variant: Variant,
    pub seeds: usize,
    /// Per seed: FLOPs to reach the same seed's baseline final loss / the baseline's FLOPs
    /// (None: never reached).
    pub flops_ratios: Vec<Option<f64>>,
    /// The same for training wall time.
    pub time_ratios: Vec<Option<f64>>,
    pub final_losses: Vec<f64>,
}

/// Welch's two-sample t-test of the means of `a` and `b` (unequal variances): the two-sided
/// p-value, or None with fewer than two values on a side or no spread at all.
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    let (sa, sb) = (Spread::of(a)?, Spread::of(b)?);
    if sa.n < 2 || sb.n < 2 {
        return None;
    }
    let (va, vb) = (sa.std.powi(2) / sa.n as f64, sb.std.powi(2) / sb.n as f64);
    if va + vb == 0.0 {
        return None;
    }
    let t = (sa.mean - sb.mean) / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va.powi(2) / (sa.n - 1) as f64 + vb.powi(2) / (sb.n - 1) as f64);
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(2.0 * (1.0 - dist.cdf(t.abs())))
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Spread {
            mean,
            std: var.sqrt(),
            n,
        })
    }
}

impl Summary {
    pub fn flops(&self) -> Option<Spread> {
        Spread::of(
            &self
                .flops_ratios
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
        )
    }

    pub fn time(&self) -> Option<Spread> {
        Spread::of(
            &self
                .time_ratios
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
        )
    }

    pub fn final_loss(&self) -> Option<Spread> {
        Spread::of(&self.final_losses)
    }

    fn reached(&self) -> usize {
        self.flops_ratios.iter().flatten().count()
    }
}

/// The first point where the full model's loss reaches `target`, linearly interpolated between
/// consecutive full-model passes: (FLOPs, seconds).
pub fn reach(points: &[Point], target: f64) -> Option<(f64, f64)> {
    let mut previous: Option<&Point> = None;
    for p in points {
        if p.level == 1 && p.loss <= target {
            return Some(match previous {
                Some(q) if q.level == 1 && q.loss > target => {
                    let t = (q.loss - target) / (q.loss - p.loss);
                    (
                        q.flops + t * (p.flops - q.flops),
                        q.seconds + t * (p.seconds - q.seconds),
                    )
                }
                _ => (p.flops, p.seconds),
            });
        }
        previous = Some(p);
    }
    None
}

/// Summaries of every variant in `variants`, paired with the run of `baseline` of the same
/// seed.
pub fn summarize(variants: &[Variant], runs: &[RunResult], baseline: &Variant) -> Vec<Summary> {
    let baseline = |seed: u64| {
        runs.iter()
            .find(|r| &r.variant == baseline && r.seed == seed)
    };
    variants
        .iter()
        .map(|variant| {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| &r.variant == variant).collect();
            let mut flops_ratios = Vec::new();
            let mut time_ratios = Vec::new();
            for run in &mine {
                let Some(base) = baseline(run.seed) else {
                    continue;
                };
                let reached = reach(&run.points, base.final_loss);
                flops_ratios.push(reached.map(|(f, _)| f / base.flops));
                time_ratios.push(reached.map(|(_, s)| s / base.seconds));
            }
            Summary {
                variant: variant.clone(),
                seeds: mine.len(),
                flops_ratios,
                time_ratios,
                final_losses: mine.iter().map(|r| r.final_loss).collect(),
            }
        })
        .collect()
}

fn ratio_cell(spread: Option<Spread>, reached: usize, of: usize) -> String {
    match spread {
        _ if of == 0 => "no finished run".into(),
        Some(s) if reached == of => format!("{:.3} ± {:.3}", s.mean, s.std),
        Some(s) => format!("{:.3} ± {:.3} ({reached} of {of} seeds)", s.mean, s.std),
        None => format!("not reached (0 of {of})"),
    }
}

/// The Markdown table: one row per variant.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| run | seeds | FLOPs to baseline's final loss (ratio) | wall time to it (ratio) | FLOPs saved | final valid loss, equal FLOPs |\n\
         |---|---|---|---|---|---|\n",
    );
    for s in summaries {
        let of = s.flops_ratios.len();
        let saved = match s.flops() {
            Some(f) if s.reached() == of && of > 0 => format!("{:.1}%", 100.0 * (1.0 - f.mean)),
            _ => "—".into(),
        };
        let loss = s
            .final_loss()
            .map_or("—".into(), |l| format!("{:.4} ± {:.4}", l.mean, l.std));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            s.variant.name,
            s.seeds,
            ratio_cell(s.flops(), s.reached(), of),
            ratio_cell(s.time(), s.time_ratios.iter().flatten().count(), of),
            saved,
            loss
        );
    }
    out
}

/// Everything the benchmark measured, as written to `results.json`.
#[derive(Serialize)]
pub struct Report<'a> {
    pub scale: &'a Scale,
    /// The corpus's file name.
    pub corpus: &'a str,
    pub device: &'a str,
    pub threads: usize,
    pub summaries: &'a [Summary],
    pub runs: &'a [RunResult],
}

/// One results folder of the trend.
struct Budget {
    model: &'static str,
    steps: u64,
    tokens_per_parameter: f64,
    corpus: String,
    /// A recipe study (its first summary is the better of two tuned baselines) rather than a
    /// tuned comparison (its first summary is the tuned cosine baseline).
    study: bool,
    report: serde_json::Value,
}

/// `trend.md` in `out`: one row per variant and budget from every `tuned-Nx/`, `bert-tuned-Nx/`
/// and `study-Nx/` `results.json` there; and the plot of the FLOPs each multi-level run saves
/// against the training tokens per parameter.
pub fn write_trend(out: &Path) -> Result<()> {
    let mut budgets = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let dir = entry
            .with_context(|| format!("listing {}", out.display()))?
            .path();
        let json = dir.join("results.json");
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let study = name.starts_with("study-");
        let tuned = name.starts_with("tuned-") || name.starts_with("bert-tuned-");
        if !(tuned || study) || !json.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
        let scale: Scale = serde_json::from_value(report["scale"].clone())
            .with_context(|| format!("reading the scale of {}", json.display()))?;
        let model = match scale.task {
            Task::Bert => "BERT",
            Task::Gpt => "GPT",
        };
        // Folders written before the corpus was recorded ran on the default, the Rust Book.
        let corpus = report["corpus"]
            .as_str()
            .unwrap_or("rust-book.txt")
            .trim_end_matches(".txt")
            .to_string();
        budgets.push(Budget {
            model,
            steps: scale.baseline_steps as u64,
            tokens_per_parameter: scale.tokens_per_parameter()?,
            corpus,
            study,
            report,
        });
    }
    budgets.sort_by(|a, b| (b.model, a.study, a.steps).cmp(&(a.model, b.study, b.steps)));
    let mut out_text = String::from(
        "| model | corpus | baseline steps | tokens per parameter | run | peak lr | seeds | FLOPs to the tuned baseline's final loss (ratio) | final valid loss, equal FLOPs |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let mut savings = Vec::new();
    for budget in &budgets {
        let Some(summaries) = budget.report["summaries"].as_array() else {
            continue;
        };
        for s in summaries {
            let floats = |key: &str| -> Vec<Option<f64>> {
                s[key]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_f64()).collect())
                    .unwrap_or_default()
            };
            let ratios = floats("flops_ratios");
            let reached: Vec<f64> = ratios.iter().flatten().copied().collect();
            // The trend compares the tuned variants; a sweep's knobs stay in its own table. A
            // study's recipes are all tuned.
            let swept = serde_json::from_value::<Variant>(s["variant"].clone())
                .is_ok_and(|v| !v.has_default_knobs());
            if swept && !budget.study {
                continue;
            }
            let name = s["variant"]["name"].as_str().unwrap_or("?");
            let levels = s["variant"]["levels"].as_u64().unwrap_or(1);
            // A point of the plot only where every seed reached the baseline's loss.
            if levels >= 2 && !name.contains("constant") && !ratios.is_empty() {
                let saved: Vec<f64> = reached.iter().map(|r| (1.0 - r) * 100.0).collect();
                let run = if budget.study {
                    plan::without_lr_factor(name).to_string()
                } else {
                    format!("{levels} levels")
                };
                let series = format!("{}, {run} ({})", budget.model, budget.corpus);
                let (mean, std, all) = match Spread::of(&saved) {
                    Some(spread) if reached.len() == ratios.len() => {
                        (spread.mean, spread.std, true)
                    }
                    // Some seed never reached it: nothing saved, drawn hollow at 0.
                    _ => (0.0, 0.0, false),
                };
                savings.push(plot::Saving {
                    series,
                    tokens_per_parameter: budget.tokens_per_parameter,
                    mean,
                    std,
                    reached: all,
                });
            }
            let losses: Vec<f64> = floats("final_losses").into_iter().flatten().collect();
            let _ = writeln!(
                out_text,
                "| {} | {} | {} | {:.1} | {name} | {:.1e} | {} | {} | {} |",
                budget.model,
                budget.corpus,
                budget.steps,
                budget.tokens_per_parameter,
                s["variant"]["lr"].as_f64().unwrap_or(f64::NAN),
                losses.len(),
                ratio_cell(Spread::of(&reached), reached.len(), ratios.len()),
                Spread::of(&losses)
                    .map_or("—".into(), |l| format!("{:.4} ± {:.4}", l.mean, l.std)),
            );
        }
    }
    let path = out.join("trend.md");
    std::fs::write(&path, &out_text).with_context(|| format!("writing {}", path.display()))?;
    plot::register_font()?;
    plot::plot_savings(&savings, &out.join("savings_vs_budget"))?;
    println!(
        "\n{out_text}\nwrote {} and savings_vs_budget.{{png,svg}}",
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(flops: f64, loss: f64, level: usize) -> Point {
        Point {
            steps: 0,
            flops,
            seconds: flops * 2.0,
            loss,
            level,
        }
    }

    /// A study folder joins the trend beside a tuned one: rows tagged with their corpus (a
    /// folder that does not record one ran on the Rust Book) and tokens per parameter, and
    /// the plot written.
    #[test]
    fn the_trend_gathers_study_folders_with_their_corpus() -> Result<()> {
        let out = std::env::temp_dir().join(format!("vcycle-trend-{}", std::process::id()));
        let scale = Scale::full().times(4);
        let summary = |name: &str, levels: usize, ratios: [f64; 2], losses: [f64; 2]| {
            serde_json::json!({
                "variant": {"name": name, "levels": levels, "lr": 1e-3},
                "flops_ratios": ratios,
                "final_losses": losses,
            })
        };
        let folders = [
            (
                "study-4x",
                serde_json::json!({
                    "scale": scale.clone(),
                    "corpus": "rust-docs.txt",
                    "summaries": [
                        summary("baseline, wsd, lr x2", 1, [1.0, 1.0], [1.82, 1.83]),
                        summary("1 layer, grow at 70%, lr x0.5", 2, [0.85, 0.87], [1.78, 1.79]),
                    ],
                }),
            ),
            (
                "tuned-4x",
                serde_json::json!({
                    "scale": scale,
                    "summaries": [summary("baseline, cosine, lr x2", 1, [1.0, 1.0], [1.19, 1.20])],
                }),
            ),
        ];
        for (name, report) in folders {
            std::fs::create_dir_all(out.join(name))?;
            std::fs::write(out.join(name).join("results.json"), report.to_string())?;
        }
        write_trend(&out)?;
        let trend = std::fs::read_to_string(out.join("trend.md"))?;
        let png = out.join("savings_vs_budget.png").is_file();
        std::fs::remove_dir_all(&out)?;
        assert!(
            trend.contains("| GPT | rust-docs | 2400 | 2.9 | 1 layer, grow at 70%, lr x0.5 | 1.0e-3 | 2 | 0.860 ± 0.014 |"),
            "{trend}"
        );
        assert!(
            trend.contains("| GPT | rust-book | 2400 | 2.9 | baseline, cosine, lr x2 |"),
            "{trend}"
        );
        assert!(png);
        Ok(())
    }

    #[test]
    fn reach_interpolates_between_full_model_passes_only() {
        let points = [
            p(1.0, 3.0, 1),
            p(2.0, 1.0, 2),
            p(3.0, 2.0, 1),
            p(4.0, 1.0, 1),
        ];
        // The small model's 1.0 does not count; between 3 (loss 2) and 4 (loss 1), 1.5 is hit
        // half-way.
        assert_eq!(reach(&points, 1.5), Some((3.5, 7.0)));
        assert_eq!(reach(&points, 0.5), None);
        assert_eq!(reach(&points, 3.0), Some((1.0, 2.0)));
    }

    /// [1, 2, 3, 4] against [3, 4, 5, 6.5]: t = −2.1532, df = 5.8775, and the two tails of
    /// Student's t beyond it, 0.075722 (Simpson's rule on the density, 200,000 intervals).
    #[test]
    fn welch_matches_a_reference_value() {
        let p = welch_p(&[1.0, 2.0, 3.0, 4.0], &[3.0, 4.0, 5.0, 6.5]).unwrap();
        assert!((p - 0.075722).abs() < 1e-5, "{p}");
        assert!(welch_p(&[1.0], &[2.0, 3.0]).is_none());
    }

    #[test]
    fn spread_is_mean_and_sample_deviation() {
        let s = Spread::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, 1.0, 3));
        assert!(Spread::of(&[]).is_none());
    }
}
