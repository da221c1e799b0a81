//! Runs that are not the V: a grow-only path (late growth, started small), a W, resuming a
//! path after a crash, and the warmup-stable-decay schedule across segments.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::tensor::Device;
use vcycle_plugin::{
    Decay, DepthInit, Gpt2, Operator, PathSegment, Phase, Segment, VCycle, VCycleConfig,
    VCycleOutcome, Wsd,
};

use crate::support::*;

fn driver(config: VCycleConfig, run: &Path) -> VCycle<Gpt2> {
    VCycle::new(config, run, Device::flex().autodiff()).expect("driver")
}

fn run_path(config: VCycleConfig, run: &Path) -> VCycleOutcome<Gpt2> {
    let (train, valid) = loaders(24_000, 16, 4);
    let model = tiny_gpt2().init(&Device::flex().autodiff()).expect("model");
    driver(config, run)
        .run(model, train, valid, quiet_training)
        .expect("run")
}

/// Two levels as in `two_levels`, walked along `levels` with `steps` steps each.
fn path(levels: &[usize], steps: usize) -> VCycleConfig {
    two_levels(Some(2), Some(1), 0).with_path(Some(
        levels.iter().map(|&l| PathSegment::new(l, steps)).collect(),
    ))
}

fn summary(outcome: &VCycleOutcome<Gpt2>) -> Vec<(Phase, Operator, usize)> {
    outcome
        .boundaries
        .iter()
        .map(|b| (b.phase, b.operator.clone(), b.steps))
        .collect()
}

#[test]
fn late_growth_starts_small_and_grows_once_exactly() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let config = VCycleConfig::late_growth(two_levels(Some(2), Some(1), 0).levels, 10, 0.6)
        .with_depth_init(DepthInit::Zero);
    let outcome = run_path(config, &run);
    assert_eq!(
        summary(&outcome),
        vec![
            (
                Phase::Bottom,
                Operator::Grow {
                    alpha: 1.0,
                    interpolated_with: None
                },
                6
            ),
            (Phase::Up, Operator::End, 10),
        ]
    );
    let b = &outcome.boundaries;
    // Started small: the fresh full model, coalesced, is what the first segment trained.
    assert!(run.join("checkpoints/00-init/model.safetensors").is_file());
    assert!(
        run.join("checkpoints/00-init-L2/model.safetensors")
            .is_file()
    );
    assert_eq!((b[0].from.heads, b[0].from.layers), (2, 1));
    let to = b[0].to.as_ref().expect("grown size");
    assert_eq!((to.heads, to.layers), (4, 2));
    // Growing with α = 1, exact in width and (zero-initialised) in depth, keeps the loss.
    let (before, after) = (
        b[0].valid_loss_before,
        b[0].valid_loss_after.expect("after"),
    );
    assert!((before - after).abs() < 1e-4, "{before} -> {after}");
    assert_eq!(outcome.steps, 10);
}

#[test]
fn a_w_interpolates_with_the_last_model_of_each_size() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let outcome = run_path(path(&[1, 2, 1, 2, 1], 2), &run);
    let grow = |trained: &str| Operator::Grow {
        alpha: 0.5,
        interpolated_with: Some(Path::new("checkpoints").join(trained)),
    };
    assert_eq!(
        summary(&outcome),
        vec![
            (Phase::Down, Operator::Coalesce, 2),
            (Phase::Bottom, grow("01-down-L1"), 4),
            (Phase::Down, Operator::Coalesce, 6),
            (Phase::Bottom, grow("03-down-L1"), 8),
            (Phase::Up, Operator::End, 10),
        ]
    );
    let log: Vec<vcycle_plugin::BoundaryRecord> =
        serde_json::from_str(&std::fs::read_to_string(run.join("boundaries.json")).expect("log"))
            .expect("log JSON");
    assert_eq!(log, outcome.boundaries);
}

#[test]
fn a_path_resumes_after_a_crash_with_its_budget_exact() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let config = || path(&[2, 1, 2, 1], 3);
    // The third segment's training never starts: the process dies there.
    let crashed = catch_unwind(AssertUnwindSafe(|| {
        let (train, valid) = loaders(24_000, 16, 4);
        let model = tiny_gpt2().init(&Device::flex().autodiff()).expect("model");
        let training = |segment: &Segment, training| {
            assert!(segment.index < 3, "killed before segment 3");
            quiet_training(segment, training)
        };
        driver(config(), &run).run(model, train, valid, training)
    }));
    assert!(crashed.is_err());
    let (train, valid) = loaders(24_000, 16, 4);
    let outcome = driver(config(), &run)
        .resume(fresh_gpt2(), train, valid, quiet_training)
        .expect("resume");
    assert_eq!(
        outcome
            .boundaries
            .iter()
            .map(|b| b.steps)
            .collect::<Vec<_>>(),
        vec![3, 6, 9, 12]
    );
    assert_eq!(
        outcome.boundaries[2].operator,
        Operator::Grow {
            alpha: 0.5,
            interpolated_with: Some(Path::new("checkpoints").join("02-down-L1")),
        }
    );
}

#[test]
fn warmup_stable_decay_spans_the_run_across_its_segments() {
    let levels = two_levels(Some(2), Some(1), 0).levels;
    let wsd = Wsd::new()
        .with_warmup_steps(2)
        .with_decay_fraction(0.2)
        .with_decay(Decay::Sqrt)
        .with_rewarm_steps(2);
    let config = VCycleConfig::late_growth(levels, 10, 0.7).with_wsd(Some(wsd));
    let segments = driver(config, Path::new("unused")).segments();
    let rates: Vec<Vec<f64>> = segments
        .iter()
        .map(|s| (1..=s.steps).map(|i| s.schedule().rate(i)).collect())
        .collect();
    // Small model (peak 5e-3): warm-up over 2 steps, then the peak for its 7 steps.
    assert_eq!(rates[0].len(), 7);
    assert!((rates[0][0] - 2.5e-3).abs() < 1e-15);
    assert!(rates[0][1..].iter().all(|&r| (r - 5e-3).abs() < 1e-15));
    // Full model (peak 3e-3) for the last 3 steps: a re-warm-up step after growing, then the
    // decay of the run's last 2 steps (peak at step 8): 1 − √(1/2) of the way, then the floor
    // (10%) at the last step.
    let floor = 3e-4;
    let at = |t: f64| floor + (3e-3 - floor) * (1.0 - t.sqrt());
    assert_eq!(rates[1].len(), 3);
    assert!((rates[1][0] - 1.5e-3).abs() < 1e-15, "{:?}", rates[1]);
    assert!((rates[1][1] - at(0.5)).abs() < 1e-15, "{:?}", rates[1]);
    assert!((rates[1][2] - floor).abs() < 1e-15, "{:?}", rates[1]);
    // Burn's scheduler follows the same rates.
    for (segment, want) in segments.iter().zip(&rates) {
        let mut scheduler = segment.schedule().scheduler().expect("scheduler");
        for w in want {
            let got = scheduler.step().base();
            assert!((got - w).abs() < 1e-15, "{}: {got} vs {w}", segment.name());
        }
    }
}

#[test]
fn bad_paths_are_refused_before_anything_runs() {
    for (config, words) in [
        (path(&[1], 3), "at least 2 segments"),
        (path(&[1, 3, 1], 3), "level 3 does not exist"),
        (path(&[1, 1], 3), "both at level 1"),
        (path(&[1, 2], 3), "must end at level 1"),
        (
            VCycleConfig {
                down_steps: 5,
                ..path(&[2, 1], 3)
            },
            "down_steps, bottom_steps and up_steps must be 0",
        ),
        (
            path(&[2, 1], 3).with_optimizer_state(vcycle_plugin::OptimizerStatePolicy::Carry),
            "no model was trained",
        ),
    ] {
        match VCycle::<Gpt2>::new(config, "unused", Device::flex().autodiff()) {
            Err(vcycle_plugin::Error::VCycleConfig(message)) => {
                assert!(message.contains(words), "{message}")
            }
            Err(other) => panic!("{words}: refused for another reason: {other}"),
            Ok(_) => panic!("{words}: not refused"),
        }
    }
}
