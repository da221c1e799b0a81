//! The recipe study (`--study`): cosine and warmup-stable-decay baselines and the recipes of
//! `plan::study` (the V-cycle under both schedules, late growth from one layer at three growth
//! points, from half size, and with exact depth growth), each with its peak rate swept on seed
//! 0 (and widened, ×2 at a time, while the best rate is the edge of the sweep); the better
//! baseline is *the* baseline; more seeds for both baselines and the two best
//! recipes; Welch's t-test of every final loss against the baseline's.

use std::fmt::Write as _;

use anyhow::{Result, bail};

use crate::plan::{self, Scale, Variant};
use crate::report::{self, Spread};
use crate::run::RunResult;
use crate::{Args, print_budgets, run_all, write_outputs};

/// How far a study widens a sweep beyond its factors, ×2 or ×½ at a time, when a variant's
/// best rate is the edge of what it tried: a best rate needs a worse one on each side.
const MAX_WIDENING: i32 = 2;

/// `factors` and their widenings (×2^k, |k| ≤ [`MAX_WIDENING`]), in increasing order.
fn candidates(factors: &[f64]) -> Vec<f64> {
    let mut all: Vec<f64> = factors
        .iter()
        .flat_map(|f| (-MAX_WIDENING..=MAX_WIDENING).map(move |k| f * 2f64.powi(k)))
        .collect();
    all.sort_by(f64::total_cmp);
    all.dedup_by(|a, b| (*a / *b - 1.0).abs() < 1e-9);
    all
}

/// For each of `variants` whose best seed-0 rate among `runs` is the lowest or highest it
/// tried, the next rate beyond it (half or double), if that is still a candidate and untried.
fn widen(variants: &[Variant], factors: &[f64], runs: &[RunResult]) -> Vec<Variant> {
    let candidates = candidates(factors);
    let tried = |v: &Variant, f: f64| {
        runs.iter()
            .find(|r| r.variant == v.lr_times(f) && r.seed == 0)
    };
    let mut wider = Vec::new();
    for v in variants {
        let trials: Vec<(f64, f64)> = candidates
            .iter()
            .filter_map(|&f| tried(v, f).map(|r| (f, r.final_loss)))
            .collect();
        let Some(&(best, _)) = trials.iter().min_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        let (Some(low), Some(high)) = (trials.first(), trials.last()) else {
            continue;
        };
        let beyond = if best == low.0 {
            best / 2.0
        } else if best == high.0 {
            best * 2.0
        } else {
            continue;
        };
        if candidates.iter().any(|&c| (c / beyond - 1.0).abs() < 1e-9) && tried(v, beyond).is_none()
        {
            wider.push(v.lr_times(beyond));
        }
    }
    wider
}

/// The best-rate version of each of `variants` among the seed-0 `runs` of `factors`, with its
/// final loss; variants with no finished trial are left out.
fn best(
    variants: &[Variant],
    factors: &[f64],
    runs: &[RunResult],
    tuning: &mut String,
) -> Vec<(Variant, f64)> {
    let mut out = Vec::new();
    for v in variants {
        let mut trials: Vec<(f64, &RunResult)> = factors
            .iter()
            .filter_map(|&f| {
                let trial = v.lr_times(f);
                runs.iter()
                    .find(|r| r.variant == trial && r.seed == 0)
                    .map(|r| (f, r))
            })
            .collect();
        trials.sort_by(|a, b| a.1.final_loss.total_cmp(&b.1.final_loss));
        for (f, r) in &trials {
            let _ = writeln!(
                tuning,
                "| {} | {f} | {:.1e} / {:.1e} | {:.4} |",
                v.name, r.variant.lr, r.variant.small_lr, r.final_loss
            );
        }
        if let Some((f, r)) = trials.first() {
            let edge = trials.iter().all(|(g, _)| g >= f) || trials.iter().all(|(g, _)| g <= f);
            if edge {
                println!(
                    "note: the best rate of {} is its sweep's edge (x{f})",
                    v.name
                );
            }
            out.push((v.lr_times(*f), r.final_loss));
        }
    }
    out
}

pub fn study(args: &Args, scale: &Scale) -> Result<()> {
    let (baselines, recipes) = plan::study(scale);
    let factors = |list: &[f64]| -> Result<Vec<f64>> {
        if list.is_empty() || list.iter().any(|f| !f.is_finite() || *f <= 0.0) {
            bail!("learning-rate factors must be positive numbers");
        }
        Ok(list.to_vec())
    };
    let (base_factors, recipe_factors) = (
        factors(&args.lr_factors)?,
        factors(&args.recipe_lr_factors)?,
    );
    // Seed 0 first, factor by factor, so that an interrupted study holds comparable runs.
    let mut trials: Vec<Variant> = base_factors
        .iter()
        .flat_map(|&f| baselines.iter().map(move |v| v.lr_times(f)))
        .collect();
    trials.extend(
        recipe_factors
            .iter()
            .flat_map(|&f| recipes.iter().map(move |v| v.lr_times(f))),
    );
    print_budgets(trials.iter(), scale)?;
    std::fs::create_dir_all(&args.out)?;
    let jobs: Vec<(Variant, u64)> = trials.iter().map(|v| (v.clone(), 0)).collect();
    let mut first = run_all(args, &jobs)?;
    // A best rate at the edge of a sweep is widened until a worse rate lies beyond it.
    for _ in 0..MAX_WIDENING {
        let wider: Vec<(Variant, u64)> = widen(&baselines, &base_factors, &first)
            .into_iter()
            .chain(widen(&recipes, &recipe_factors, &first))
            .map(|v| (v, 0))
            .collect();
        if wider.is_empty() {
            break;
        }
        print_budgets(wider.iter().map(|(v, _)| v), scale)?;
        first.extend(run_all(args, &wider)?);
    }

    let mut tuning = String::from(
        "| run | lr factor | peak lr (full / smaller) | final valid loss, seed 0 |\n|---|---|---|---|\n",
    );
    let best_baselines = best(&baselines, &candidates(&base_factors), &first, &mut tuning);
    let mut best_recipes = best(&recipes, &candidates(&recipe_factors), &first, &mut tuning);
    let Some((baseline, _)) = best_baselines
        .iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
    else {
        bail!("no finished baseline run");
    };
    best_recipes.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Every seed for both baselines and the two best recipes; at least two for the others.
    let mut jobs: Vec<(Variant, u64)> = Vec::new();
    for seed in 1..args.seeds {
        jobs.extend(best_baselines.iter().map(|(v, _)| (v.clone(), seed)));
        for (rank, (v, _)) in best_recipes.iter().enumerate() {
            if rank < 2 || seed < 2 {
                jobs.push((v.clone(), seed));
            }
        }
    }
    let mut runs = run_all(args, &jobs)?;
    let compared: Vec<Variant> = best_baselines
        .iter()
        .chain(&best_recipes)
        .map(|(v, _)| v.clone())
        .collect();
    runs.extend(
        first
            .iter()
            .filter(|r| compared.contains(&r.variant))
            .cloned(),
    );

    // The better baseline first: the ratios and the tests refer to it.
    let mut variants = vec![baseline.clone()];
    variants.extend(compared.iter().filter(|v| **v != baseline).cloned());
    let summaries = report::summarize(&variants, &runs, &baseline);
    let losses = |v: &Variant| -> Vec<f64> {
        runs.iter()
            .filter(|r| &r.variant == v)
            .map(|r| r.final_loss)
            .collect()
    };
    let base_losses = losses(&baseline);
    let mut tests = format!(
        "Against the better baseline, {} ({:.1} training tokens per parameter of the full model):\n\n\
         | run | seeds | final valid loss | difference | p (Welch) | reads of the training split |\n|---|---|---|---|---|---|\n",
        baseline.name,
        scale.tokens_per_parameter()?
    );
    for v in &variants {
        let mine = losses(v);
        let reads: Vec<f64> = runs
            .iter()
            .filter(|r| &r.variant == v)
            .map(|r| r.passes)
            .collect();
        let (Some(l), Some(b)) = (Spread::of(&mine), Spread::of(&base_losses)) else {
            continue;
        };
        let p = report::welch_p(&mine, &base_losses).map_or("—".into(), |p| format!("{p:.3}"));
        let reads = Spread::of(&reads).map_or("—".into(), |r| format!("{:.2}", r.mean));
        let _ = writeln!(
            tests,
            "| {} | {} | {:.4} ± {:.4} | {:+.4} | {p} | {reads} |",
            v.name,
            l.n,
            l.mean,
            l.std,
            l.mean - b.mean
        );
    }
    println!("\n{tests}");
    let mut all = runs.clone();
    all.extend(first.iter().filter(|r| !runs.contains(r)).cloned());
    let extra = format!("{tests}\nLearning-rate sweep (seed 0):\n\n{tuning}");
    write_outputs(args, scale, &variants, &summaries, &all, &extra)?;
    report::write_trend(args.out.parent().unwrap_or(&args.out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(variant: Variant, final_loss: f64) -> RunResult {
        RunResult {
            variant,
            seed: 0,
            points: Vec::new(),
            steps: 0,
            flops: 0.0,
            seconds: 0.0,
            final_loss,
            passes: 0.0,
        }
    }

    /// A best rate at an edge of the sweep gets the next one beyond it, up to two widenings;
    /// an interior best gets none.
    #[test]
    fn a_sweep_widens_past_an_edge_best_only() {
        let v = Variant::vcycle(2);
        let factors = [1.0, 2.0, 0.5];
        let runs = |losses: &[(f64, f64)]| -> Vec<RunResult> {
            losses
                .iter()
                .map(|&(f, loss)| result(v.lr_times(f), loss))
                .collect()
        };
        let edge = runs(&[(0.5, 1.80), (1.0, 1.85), (2.0, 1.90)]);
        assert_eq!(
            widen(std::slice::from_ref(&v), &factors, &edge),
            vec![v.lr_times(0.25)]
        );
        let top = runs(&[(0.5, 1.90), (1.0, 1.85), (2.0, 1.80), (4.0, 1.79)]);
        assert_eq!(
            widen(std::slice::from_ref(&v), &factors, &top),
            vec![v.lr_times(8.0)]
        );
        let limit = runs(&[
            (0.5, 1.90),
            (1.0, 1.85),
            (2.0, 1.80),
            (4.0, 1.79),
            (8.0, 1.78),
        ]);
        assert!(
            widen(std::slice::from_ref(&v), &factors, &limit).is_empty(),
            "×8 is the last widening"
        );
        let interior = runs(&[(0.5, 1.90), (1.0, 1.80), (2.0, 1.85)]);
        assert!(widen(std::slice::from_ref(&v), &factors, &interior).is_empty());
    }
}
