//! The segments of a cycle: where each lies, its budget, and the user's training for it.

use std::fmt;
use std::path::PathBuf;

use burn::train::{LearnerModel, SupervisedTraining, TrainLoader, ValidLoader};
use serde::{Deserialize, Serialize};

use crate::schedule::{Decay, Schedule};

/// Where a segment lies in the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before a coalesce: on the way down to the smallest level.
    Down,
    /// At the smallest level.
    Bottom,
    /// After a grow: on the way back up to the full size.
    Up,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Down => "down",
            Phase::Bottom => "bottom",
            Phase::Up => "up",
        })
    }
}

/// One training segment: one `SupervisedTraining::launch` at one level.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// 1-based position in the cycle.
    pub index: usize,
    /// Segments in the cycle (2k − 1).
    pub count: usize,
    /// Down, bottom or up.
    pub phase: Phase,
    /// 1 = the full model, k = the smallest.
    pub level: usize,
    /// Optimizer steps of this segment.
    pub steps: usize,
    /// Training batches the segment's data loader yields (steps × batches per step).
    pub batches: usize,
    /// Optimizer steps of each of the segment's Burn epochs (one epoch unless the config's
    /// `eval_every` splits it); Burn validates after each.
    pub epoch_steps: Vec<usize>,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Steps of linear warm-up to `learning_rate`.
    pub warmup_steps: usize,
    /// How the rate falls after the warm-up ([`crate::VCycleConfig::decay_segments`] says
    /// which segments decay; the others have [`Decay::Constant`]).
    pub decay: Decay,
    /// The decay's last rate as a fraction of `learning_rate`.
    pub decay_floor: f64,
    /// The artifact directory for this segment's `SupervisedTraining` (metrics, logs, Burn
    /// checkpoints).
    pub dir: PathBuf,
}

impl Segment {
    /// `03-up-L1`.
    pub fn name(&self) -> String {
        format!("{:02}-{}-L{}", self.index, self.phase, self.level)
    }

    /// The segment's learning-rate schedule, which the driver's default scheduler follows.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            peak: self.learning_rate,
            warmup: self.warmup_steps,
            steps: self.steps,
            decay: self.decay,
            floor: self.decay_floor,
        }
    }
}

/// Builds the user's `SupervisedTraining` for a segment: metrics, renderer, training strategy
/// (devices), checkpointing — everything the user would configure without the V-cycle. The
/// driver sets `num_epochs` on the result (one per entry of `Segment::epoch_steps`): the data
/// loader it passes yields exactly the segment's budget. Any `FnMut(&Segment, TrainLoader<M>, ValidLoader<M>) -> SupervisedTraining<M>`
/// is one.
pub trait SegmentTraining<M: LearnerModel> {
    /// The `SupervisedTraining` of `segment`, over the loaders the driver sized for it.
    fn training(
        &mut self,
        segment: &Segment,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
    ) -> SupervisedTraining<M>;
}

impl<M, F> SegmentTraining<M> for F
where
    M: LearnerModel,
    F: FnMut(&Segment, TrainLoader<M>, ValidLoader<M>) -> SupervisedTraining<M>,
{
    fn training(
        &mut self,
        segment: &Segment,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
    ) -> SupervisedTraining<M> {
        self(segment, train, valid)
    }
}
