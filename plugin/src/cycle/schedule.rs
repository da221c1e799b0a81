//! Learning-rate schedules: a linear warm-up, then constant or a decay to a floor, built from
//! Burn's own schedulers (`SequentialLrSchedulerConfig` of linear, constant and cosine parts).
//! A decay may span several segments (warmup-stable-decay over a whole run): each segment's
//! schedule then holds the part of it that falls in the segment.

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
    /// `1 − √t` of the way from the peak to the floor at fraction t of the decay: falls fast,
    /// then slowly (the cooldown of warmup-stable-decay studies).
    Sqrt,
}

impl Decay {
    /// The fraction of the way from the peak to the floor left at fraction `t` of the decay.
    fn remaining(self, t: f64) -> f64 {
        match self {
            Decay::Constant => 1.0,
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Decay::Linear => 1.0 - t,
            Decay::Sqrt => 1.0 - t.sqrt(),
        }
    }
}

/// A learning-rate schedule over a fixed number of optimizer steps: `warmup` steps rising
/// linearly to `peak` (step s of the warm-up has `peak · s / warmup`), then `decay` from `peak`
/// to `floor · peak` over `decay_span` (by default from the warm-up's last step to the last
/// step, which then has the floor exactly).
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
    /// The decay's last rate as a fraction of `peak` (unused by [`Decay::Constant`]).
    pub floor: f64,
    /// Where the decay runs, in this schedule's 1-based steps: it is at the peak at step
    /// `start` and reaches the floor at step `end`. Either may lie outside `1..=steps` when a
    /// decay spans several segments; the rate stays at the peak before `start` and at the
    /// floor after `end`. None: from the warm-up's last step (at least 1) to `steps`.
    pub decay_span: Option<(i64, i64)>,
}

impl Schedule {
    fn span(&self) -> (i64, i64) {
        self.decay_span.unwrap_or_else(|| {
            let start = self.warmup.min(self.steps).max(1);
            (start as i64, self.steps as i64)
        })
    }

    /// The rate of 1-based optimizer step `step`, in closed form; the scheduler
    /// [`Schedule::scheduler`] builds gives the same, step after step (up to rounding).
    pub fn rate(&self, step: usize) -> LearningRate {
        let warmup = self.warmup.min(self.steps);
        if step < warmup {
            return self.peak * step as f64 / warmup as f64;
        }
        let (start, end) = self.span();
        let step = step as i64;
        if self.decay == Decay::Constant || step <= start || end <= start {
            return self.peak;
        }
        let t = ((step - start) as f64 / (end - start) as f64).min(1.0);
        let floor = self.floor * self.peak;
        floor + (self.peak - floor) * self.decay.remaining(t)
    }

    /// Burn's scheduler for this schedule: the warm-up's rising steps, the peak until the
    /// decay starts, the decay (one Burn scheduler where one follows it exactly: a linear
    /// decay, or a cosine from its start; otherwise one constant a step), then the floor.
    pub fn scheduler(&self) -> Result<ModuleLrScheduler> {
        let bad = Error::Schedule;
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
        let steps = self.steps.max(1);
        let warmup = self.warmup.min(steps);
        let mut parts = Pieces::default();
        // Steps 1 … warmup − 1 rise; step `warmup` is the peak.
        let rising = warmup.saturating_sub(1);
        let first = self.peak / warmup.max(1) as f64;
        match rising {
            0 => {}
            1 => parts.push(1, LrSchedulerConfig::Constant(first)),
            n => parts.push(
                n,
                LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(
                    first,
                    first * n as f64,
                    n - 1,
                )),
            ),
        }
        let (start, end) = self.span();
        // The peak runs over steps from ..= p, the decay over p + 1 ..= q, the floor after q.
        let from = rising + 1;
        let clamp = |s: i64| s.clamp(from as i64 - 1, steps as i64) as usize;
        let decaying = self.decay != Decay::Constant && end > start;
        // Burn's cosine starts at its top: it is exact for a whole decay inside the schedule,
        // its first step the peak.
        let whole_cosine =
            decaying && self.decay == Decay::Cosine && start >= from as i64 && end <= steps as i64;
        let (p, q) = match () {
            _ if !decaying => (steps, steps),
            _ if whole_cosine => (start as usize - 1, end as usize),
            _ => (clamp(start), clamp(end)),
        };
        if p >= from {
            parts.push(p - from + 1, LrSchedulerConfig::Constant(self.peak));
        }
        let a = p.max(from - 1) + 1;
        if q >= a {
            let n = q - a + 1;
            let floor = self.floor * self.peak;
            if whole_cosine {
                parts.push(
                    n,
                    LrSchedulerConfig::Cosine(
                        CosineAnnealingLrSchedulerConfig::new(self.peak, n - 1).with_min_lr(floor),
                    ),
                );
            } else if self.decay == Decay::Linear && n > 1 {
                let (ra, rb) = (self.rate(a), self.rate(q));
                parts.push(
                    n,
                    LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(ra, rb, n - 1)),
                );
            } else {
                // No Burn scheduler follows this part exactly: one constant a step.
                for s in a..=q {
                    parts.push(1, LrSchedulerConfig::Constant(self.rate(s)));
                }
            }
        }
        if q < steps && q + 1 >= from {
            parts.push(steps - q, LrSchedulerConfig::Constant(self.rate(steps)));
        }
        parts.build().map_err(bad)
    }
}

/// Burn schedulers each running a number of steps, in order.
#[derive(Default)]
struct Pieces {
    parts: Vec<LrSchedulerConfig>,
    /// The step count at the end of each part.
    ends: Vec<usize>,
}

impl Pieces {
    fn push(&mut self, steps: usize, part: LrSchedulerConfig) {
        let end = self.ends.last().copied().unwrap_or(0) + steps;
        self.parts.push(part);
        self.ends.push(end);
    }

    fn build(mut self) -> std::result::Result<ModuleLrScheduler, String> {
        // The last part needs no end.
        self.ends.pop();
        if self.parts.is_empty() {
            return Err("no steps".into());
        }
        SequentialLrSchedulerConfig::new(self.parts, self.ends).init()
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
            decay_span: None,
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
            decay_span: None,
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
                decay_span: None,
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
            decay in prop::sample::select(vec![Decay::Constant, Decay::Cosine, Decay::Linear, Decay::Sqrt]),
            floor in 0.0f64..=1.0,
        ) {
            let s = Schedule { peak: 0.003, warmup, steps, decay, floor, decay_span: None };
            for (i, got) in rates(&s, steps).into_iter().enumerate() {
                let want = s.rate(i + 1);
                prop_assert!((got - want).abs() <= 1e-12, "step {}: {} vs {}", i + 1, got, want);
            }
            if decay != Decay::Constant && steps > warmup.max(1) {
                prop_assert!((s.rate(steps) - floor * 0.003).abs() <= 1e-15);
            }
        }

        /// The same for a decay that spans several segments: one segment's share of it, which
        /// may start before the segment, end after it, or lie wholly outside it.
        #[test]
        fn a_share_of_a_longer_decay_follows_the_closed_form(
            warmup in 0usize..6,
            steps in 1usize..40,
            decay in prop::sample::select(vec![Decay::Constant, Decay::Cosine, Decay::Linear, Decay::Sqrt]),
            start in -50i64..50,
            length in 1i64..60,
            floor in 0.0f64..=1.0,
        ) {
            let s = Schedule {
                peak: 0.003, warmup, steps, decay, floor, decay_span: Some((start, start + length)),
            };
            for (i, got) in rates(&s, steps).into_iter().enumerate() {
                let want = s.rate(i + 1);
                prop_assert!((got - want).abs() <= 1e-12, "step {}: {} vs {}", i + 1, got, want);
            }
        }
    }

    #[test]
    fn a_square_root_cooldown_falls_fast_then_slowly() {
        let s = Schedule {
            peak: 1.0,
            warmup: 0,
            steps: 101,
            decay: Decay::Sqrt,
            floor: 0.0,
            decay_span: None,
        };
        // A quarter of the way through the decay, half of the way down.
        assert!((s.rate(26) - 0.5).abs() < 1e-12, "{}", s.rate(26));
        assert!((s.rate(101)).abs() < 1e-12);
    }
}
