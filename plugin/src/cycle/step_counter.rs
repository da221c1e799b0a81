//! Counting the optimizer steps Burn takes in a segment, so that a `batches_per_step` that is
//! not what Burn runs (gradient accumulation × devices) is an error at the first boundary
//! instead of budgets and schedules silently off by that factor.
//!
//! Burn steps every group of a `ModuleLrScheduler` once per optimizer step, whatever the
//! strategy, so the counter is an extra group that matches no parameter. A data-parallel
//! strategy clones the learner into each worker: a clone counts on from its original's count,
//! and the steps taken are the most any copy counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use burn::module::ParamGroup;
use burn::optim::LearningRate;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};

pub(super) struct StepCounter {
    own: Arc<AtomicUsize>,
    copies: Arc<Mutex<Vec<Arc<AtomicUsize>>>>,
}

impl StepCounter {
    /// `scheduler` with a counter beside its groups, and the counter.
    pub(super) fn attach(scheduler: ModuleLrScheduler) -> (ModuleLrScheduler, StepCounter) {
        let counter = StepCounter {
            own: Arc::new(AtomicUsize::new(0)),
            copies: Arc::new(Mutex::new(Vec::new())),
        };
        let group = ParamGroup::from_paths(Vec::<String>::new());
        (scheduler.with_group(group, counter.clone()), counter)
    }

    /// The optimizer steps taken.
    pub(super) fn steps(&self) -> usize {
        let copies = self.copies.lock().unwrap_or_else(PoisonError::into_inner);
        copies
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }
}

impl Clone for StepCounter {
    fn clone(&self) -> Self {
        let own = Arc::new(AtomicUsize::new(self.own.load(Ordering::Relaxed)));
        self.copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(own.clone());
        StepCounter {
            own,
            copies: self.copies.clone(),
        }
    }
}

impl LrScheduler for StepCounter {
    fn step(&mut self) -> LearningRate {
        self.own.fetch_add(1, Ordering::Relaxed);
        0.0
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
    }

    fn load_record(&mut self, _record: LrSchedulerRecord) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::lr_scheduler::constant::ConstantLr;

    #[test]
    fn counts_the_steps_of_the_copy_that_went_furthest() {
        let (mut scheduler, counter) = StepCounter::attach(ConstantLr::new(1e-3).into());
        scheduler.step();
        let mut worker = scheduler.clone();
        for _ in 0..3 {
            worker.step();
        }
        assert_eq!(counter.steps(), 4);
        assert_eq!(
            scheduler.step().base(),
            1e-3,
            "the counter sets no parameter's rate"
        );
    }
}
