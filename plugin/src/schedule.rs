//! The default learning-rate schedule of a segment: linear warm-up, then constant.

use burn::optim::LearningRate;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

/// `lr · min(1, step / warmup)` at optimizer step `step` (1-based); `lr` when `warmup` is 0.
#[derive(Clone, Debug)]
pub struct WarmupConstantLr {
    lr: LearningRate,
    warmup: usize,
    step: usize,
}

impl WarmupConstantLr {
    pub fn new(lr: LearningRate, warmup: usize) -> Self {
        WarmupConstantLr {
            lr,
            warmup,
            step: 0,
        }
    }
}

impl LrScheduler for WarmupConstantLr {
    fn step(&mut self) -> LearningRate {
        self.step += 1;
        if self.step < self.warmup {
            self.lr * self.step as f64 / self.warmup as f64
        } else {
            self.lr
        }
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<u64>("step") {
            self.step = step as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_stays() {
        let mut s = WarmupConstantLr::new(1.0, 4);
        let lrs: Vec<f64> = (0..6).map(|_| s.step()).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        let mut none = WarmupConstantLr::new(0.5, 0);
        assert_eq!(none.step(), 0.5);
    }
}
