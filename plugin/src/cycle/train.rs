//! One segment's training: Burn's `launch` on an exact budget, and the validation loss at
//! a boundary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::Progress;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, OptimizerRecord};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::{Adaptor, LossInput, LossMetric, Metric, MetricMetadata, Numeric};
use burn::train::{
    InferenceStep, Learner, SupervisedTraining, TrainLoader, TrainStep, ValidLoader,
};

use super::step_counter::StepCounter;
use super::{FlopCounter, Segment, VCycle, VCycleModel};
use crate::checkpoint::moments::{Discard, LastRecord};
use crate::cycle::budget::ExactBatches;
use crate::cycle::config::OptimizerStatePolicy;
use crate::error::{Error, Result};

impl<M> VCycle<M>
where
    M: VCycleModel,
    <M as InferenceStep>::Output: Adaptor<LossInput>,
{
    /// Mean validation loss (Burn's `LossMetric` over the boundary's validation batches).
    pub(super) fn valid_loss(&self, model: &M, valid: &ValidLoader<M>) -> Result<f64> {
        let limit = self.config.boundary_valid_batches.unwrap_or(usize::MAX);
        // The batches go where the model is, as Burn's strategies move them: a loader built
        // without `set_device` makes them on the default device.
        let valid = valid.to_device(&self.device.clone().inner());
        let total = valid.num_items();
        let batches = valid
            .iter()
            .take(limit)
            .map(|item| item.map_err(validation_error));
        self.mean_loss(model, batches, total)
    }

    /// The first validation batch, on the model's device.
    pub(super) fn first_valid_batch(
        &self,
        valid: &ValidLoader<M>,
    ) -> Result<<M as InferenceStep>::Input> {
        let valid = valid.to_device(&self.device.clone().inner());
        match valid.iter().next() {
            Some(item) => item.map_err(validation_error),
            None => Err(Error::Data("the validation loader yields no batch".into())),
        }
    }

    /// Mean loss (Burn's `LossMetric`) of `model` over `batches`, of `total` items in all.
    pub(super) fn mean_loss(
        &self,
        model: &M,
        items: impl Iterator<Item = Result<<M as InferenceStep>::Input>>,
        total: usize,
    ) -> Result<f64> {
        let model = model.valid();
        let mut metric = LossMetric::new();
        let mut batches = 0;
        for item in items {
            let output = InferenceStep::step(&model, item?);
            let input: LossInput = output.adapt();
            batches += 1;
            let metadata = MetricMetadata {
                progress: Progress::new(batches, total, None),
                iteration: Some(batches),
                lr: None,
            };
            metric.update(&input, &metadata).map_err(validation_error)?;
        }
        Ok(metric
            .running_value()
            .map_or(f64::NAN, |entry| entry.current()))
    }

    /// Runs one segment, its optimizer starting from `carried` if given; returns the trained
    /// model (valid mode), its training FLOPs and, with carry, the optimizer's final state.
    pub(super) fn train_segment(
        &mut self,
        segment: &Segment,
        model: M,
        carried: Option<OptimizerRecord>,
        train: &TrainLoader<M>,
        valid: &ValidLoader<M>,
        training: &mut impl FnMut(&Segment, SupervisedTraining<M>) -> SupervisedTraining<M>,
    ) -> Result<(M, f64, Option<OptimizerRecord>)> {
        let fail = |message: String| Error::Segment {
            segment: segment.index,
            name: segment.name(),
            message,
        };
        let flops = Arc::new(Mutex::new(0.0));
        let batches = Arc::new(AtomicUsize::new(0));
        let count = model.flop_counter()?;
        let counted = batches.clone();
        let counter: FlopCounter<<M as TrainStep>::Input> = Arc::new(move |batch| {
            counted.fetch_add(1, Ordering::Relaxed);
            count(batch)
        });
        let passes = segment
            .epoch_steps
            .iter()
            .map(|steps| steps * self.config.batches_per_step)
            .collect();
        let loader = ExactBatches::in_passes(train.clone(), passes)
            .with_counter(counter, flops.clone())
            .into_loader();
        let mut optimizer = (self.optimizer)(segment);
        if let Some(record) = carried {
            optimizer = optimizer.load_record(record);
        }
        let (scheduler, optimizer_steps) = StepCounter::attach((self.scheduler)(segment)?);
        let learner = Learner::new(model, optimizer, scheduler);
        let carry = self.config.optimizer_state == OptimizerStatePolicy::Carry;
        let last_state = LastRecord::default();
        // One epoch per validation pass: the loader yields each pass's batches, then ends.
        let mut base = SupervisedTraining::new(&segment.dir, loader, valid.clone())
            .num_epochs(segment.epoch_steps.len())
            .label(&segment.name());
        if carry {
            // `launch` gives back only the model; the checkpointer Burn calls after every epoch
            // hands over the optimizer state.
            base = base
                .with_custom_checkpointers(Discard, last_state.clone(), Discard)
                .with_checkpointing_strategy(KeepLastNCheckpoints::new(1));
        }
        let result = training(segment, base).launch(learner);
        if let Some(source) = result.error {
            return Err(Error::Training {
                segment: segment.index,
                name: segment.name(),
                source,
            });
        }
        if let Some(stop) = result.interrupted {
            return Err(fail(format!(
                "training was interrupted: {}",
                stop.reason.unwrap_or_else(|| "no reason given".into())
            )));
        }
        let seen = batches.load(Ordering::Relaxed);
        if seen != segment.batches {
            return Err(fail(format!(
                "trained on {seen} batches instead of the budget's {}",
                segment.batches
            )));
        }
        let taken = optimizer_steps.steps();
        if taken != segment.steps {
            return Err(Error::BatchesPerStep {
                segment: segment.index,
                name: segment.name(),
                batches: seen,
                batches_per_step: self.config.batches_per_step,
                planned: segment.steps,
                taken,
            });
        }
        let flops = *flops
            .lock()
            .map_err(|_| fail("the FLOP counter panicked while counting".into()))?;
        let optimizer = last_state.take();
        if carry && optimizer.is_none() {
            return Err(fail(
                "Burn checkpointed no optimizer state to carry (with carried moments, the \
                 segment closure must keep the driver's checkpointers)"
                    .into(),
            ));
        }
        Ok((result.model, flops, optimizer))
    }
}

fn validation_error(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Validation {
        source: Box::new(error),
    }
}

/// The driver's default optimizer: AdamW (Burn's defaults) with gradient-norm clipping at 1.0.
/// Public so a baseline without the V-cycle can train with exactly the same one.
pub fn default_optimizer() -> ModuleOptimizer {
    AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init()
}
