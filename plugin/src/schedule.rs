//! Learning-rate schedules: a linear warm-up, then constant or a cosine or linear decay to a
//! floor, built from Burn's own schedulers (`SequentialLrSchedulerConfig` of linear, constant
//! and cosine parts).

use burn::config::Config;
use burn::optim::LearningRate;
use burn::optim::lr_scheduler::LrSchedulerConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::sequential::SequentialLrSchedulerConfig;

use crate::error::{Error, Result};

/// How the learning rate moves after the warm-up.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Decay {
    /// Stays at the peak.
    Constant,
    /// Half a cosine from the peak down to the floor.
    Cosine,
    /// A straight line from the peak down to the floor.
    Linear,
}

/// A learning-rate schedule over a fixed number of optimizer steps: `warmup` steps rising
/// linearly to `peak` (step s of the warm-up has `peak · s / warmup`), then `decay` from `peak`
/// to `floor · peak`, which the last step reaches exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The rate at the end of the warm-up.
    pub peak: LearningRate,
    /// Warm-up steps (0: start at `peak`).
    pub warmup: usize,
    /// Optimizer steps in all, warm-up included.
    pub steps: usize,
    /// How the rate falls after the warm-up.
    pub decay: Decay,
    /// The last step's rate as a fraction of `peak` (unused by [`Decay::Constant`]).
    pub floor: f64,
}

impl Schedule {
    /// The rate of 1-based optimizer step `step`, in closed form; the scheduler
    /// [`Schedule::scheduler`] builds gives the same, step after step (up to rounding). The
    /// decay starts at the warm-up's last step (the peak), so with at least two steps after the
    /// warm-up the last step has exactly the floor.
    pub fn rate(&self, step: usize) -> LearningRate {
        let warmup = self.warmup.min(self.steps);
        if step < warmup {
            return self.peak * step as f64 / warmup as f64;
        }
        let start = warmup.max(1);
        let t = if self.steps > start {
            (step.saturating_sub(start) as f64 / (self.steps - start) as f64).min(1.0)
        } else {
            0.0
        };
        let floor = self.floor * self.peak;
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine => {
                floor + 0.5 * (self.peak - floor) * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Decay::Linear => self.peak - (self.peak - floor) * t,
        }
    }

    /// Burn's scheduler for this schedule: the warm-up's rising steps, then the decay from the
    /// peak, as a sequence.
    pub fn scheduler(&self) -> Result<ModuleLrScheduler> {
        let bad = |m: String| Error::VCycleConfig(format!("learning-rate schedule: {m}"));
        if !(self.peak.is_finite() && self.peak > 0.0 && self.peak <= 1.0) {
            return Err(bad(format!(
                "the peak rate must lie in (0, 1], got {}",
                self.peak
            )));
        }
        if !(0.0..=1.0).contains(&self.floor) {
            return Err(bad(format!(
                "the floor must lie in [0, 1], got {}",
                self.floor
            )));
        }
        let warmup = self.warmup.min(self.steps);
        let mut parts = Vec::new();
        let mut milestones = Vec::new();
        // Steps 1 … warmup − 1 rise; step `warmup` is the peak and the decay's first step.
        let rising = warmup.saturating_sub(1);
        let first = self.peak / warmup.max(1) as f64;
        match rising {
            0 => {}
            1 => parts.push(LrSchedulerConfig::Constant(first)),
            n => parts.push(LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(
                first,
                first * n as f64,
                n - 1,
            ))),
        }
        if rising > 0 {
            milestones.push(rising);
        }
        let decaying = self.steps.saturating_sub(rising).max(1);
        let floor = self.floor * self.peak;
        parts.push(match self.decay {
            _ if decaying == 1 => LrSchedulerConfig::Constant(self.peak),
            Decay::Constant => LrSchedulerConfig::Constant(self.peak),
            Decay::Cosine => LrSchedulerConfig::Cosine(
                CosineAnnealingLrSchedulerConfig::new(self.peak, decaying - 1).with_min_lr(floor),
            ),
            Decay::Linear => LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(
                self.peak,
                floor,
                decaying - 1,
            )),
        });
        SequentialLrSchedulerConfig::new(parts, milestones)
            .init()
            .map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rates(schedule: &Schedule, n: usize) -> Vec<f64> {
        let mut s = schedule.scheduler().unwrap();
        (0..n).map(|_| s.step().base()).collect()
    }

    #[test]
    fn warms_up_linearly_then_stays() {
        let s = Schedule {
            peak: 1.0,
            warmup: 4,
            steps: 6,
            decay: Decay::Constant,
            floor: 0.1,
        };
        assert_eq!(rates(&s, 6), vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_reaches_the_floor_at_the_last_step_and_stays() {
        let s = Schedule {
            peak: 0.002,
            warmup: 10,
            steps: 110,
            decay: Decay::Cosine,
            floor: 0.1,
        };
        let r = rates(&s, 112);
        assert!((r[9] - 0.002).abs() < 1e-15, "{}", r[9]);
        assert!((r[59] - 0.0011).abs() < 1e-12, "halfway: {}", r[59]);
        assert!((r[109] - 0.0002).abs() < 1e-15, "last: {}", r[109]);
        assert!(r[110] >= 0.0002 - 1e-15, "after the end: {}", r[110]);
    }

    #[test]
    fn bad_peaks_and_floors_are_refused() {
        for (peak, floor) in [
            (0.0, 0.1),
            (f64::NAN, 0.1),
            (2.0, 0.1),
            (0.1, 1.5),
            (0.1, -0.1),
        ] {
            let s = Schedule {
                peak,
                warmup: 2,
                steps: 10,
                decay: Decay::Cosine,
                floor,
            };
            assert!(s.scheduler().is_err(), "peak {peak}, floor {floor}");
        }
    }

    proptest! {
        /// Burn's sequence of schedulers gives the closed form at every step, for every decay,
        /// warm-up and length (edge cases of 0, 1 and 2 steps included).
        #[test]
        fn the_scheduler_follows_the_closed_form(
            warmup in 0usize..12,
            steps in 1usize..40,
            decay in prop::sample::select(vec![Decay::Constant, Decay::Cosine, Decay::Linear]),
            floor in 0.0f64..=1.0,
        ) {
            let s = Schedule { peak: 0.003, warmup, steps, decay, floor };
            for (i, got) in rates(&s, steps).into_iter().enumerate() {
                let want = s.rate(i + 1);
                prop_assert!((got - want).abs() <= 1e-12, "step {}: {} vs {}", i + 1, got, want);
            }
            if decay != Decay::Constant && steps > warmup.max(1) {
                prop_assert!((s.rate(steps) - floor * 0.003).abs() <= 1e-15);
            }
        }
    }
}
