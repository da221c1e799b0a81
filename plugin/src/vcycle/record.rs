//! What the driver records: model sizes, the boundary log, the run's state and outcome.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Phase;

/// A model's size as the boundary log reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSize {
    /// 1 = the full model.
    pub level: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Parameters in all.
    pub params: usize,
}

impl fmt::Display for ModelSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "L{} ({} layers, hidden {}, {} heads, ffn {}; {} params)",
            self.level, self.layers, self.hidden, self.heads, self.ffn, self.params
        )
    }
}

/// One entry of the boundary log (`boundaries.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundaryRecord {
    /// The segment that just ended (1-based).
    pub boundary: usize,
    /// Its name, e.g. `01-down-L1`.
    pub segment: String,
    /// Its phase.
    pub phase: Phase,
    /// `coalesce`, `grow` or `end` (after the last segment).
    pub operator: String,
    /// The trained model.
    pub from: ModelSize,
    /// The model the transform produced (None after the last segment).
    pub to: Option<ModelSize>,
    /// Optimizer steps so far.
    pub steps: usize,
    /// Training FLOPs so far (the model's FLOP counter, by default [`crate::train_flops`],
    /// over every batch trained on).
    pub train_flops: f64,
    /// Validation loss of the trained model, just before the transform.
    pub valid_loss_before: f64,
    /// Validation loss of the transformed model, just after it.
    pub valid_loss_after: Option<f64>,
    /// HF directory of the trained model, relative to the run directory.
    pub trained_checkpoint: PathBuf,
    /// HF directory of the transformed model, relative to the run directory.
    pub next_checkpoint: Option<PathBuf>,
    /// Wall-clock seconds of the segment's training.
    pub segment_seconds: f64,
    /// Wall-clock seconds of the boundary itself: exporting the trained model from the device,
    /// the transform, and loading its output onto the device (validation excluded).
    #[serde(default)]
    pub boundary_seconds: f64,
}

impl fmt::Display for BoundaryRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "boundary {} after {}: {} {}",
            self.boundary, self.segment, self.operator, self.from
        )?;
        if let Some(to) = &self.to {
            write!(f, " -> {to}")?;
        }
        write!(
            f,
            " | steps {}, train FLOPs {:.3e}, {:.1} s + boundary {:.2} s | valid loss {:.4}",
            self.steps,
            self.train_flops,
            self.segment_seconds,
            self.boundary_seconds,
            self.valid_loss_before
        )?;
        if let Some(after) = self.valid_loss_after {
            write!(f, " -> {after:.4}")?;
        }
        Ok(())
    }
}

/// The run directory's `state.json`: what is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunState {
    pub(super) format: u32,
    pub(super) arch: String,
    pub(super) config: serde_json::Value,
    pub(super) completed_segments: usize,
    pub(super) steps: usize,
    pub(super) train_flops: f64,
    pub(super) boundaries: Vec<BoundaryRecord>,
}

/// What a finished cycle gives back.
pub struct VCycleOutcome<M> {
    /// The full-size model after the last segment (train mode).
    pub model: M,
    /// Its HF directory (`RUN/final`).
    pub final_dir: PathBuf,
    /// The boundary log, one record per segment (`boundaries.json`).
    pub boundaries: Vec<BoundaryRecord>,
    /// Optimizer steps of the whole cycle.
    pub steps: usize,
    /// Training FLOPs of the whole cycle, by the model's FLOP counter.
    pub train_flops: f64,
}
