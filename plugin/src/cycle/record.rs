//! What the driver records: model sizes, the boundary log, the run's state and outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Operator, Phase, Segment};

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
    /// What the boundary did: coalesce, grow or end (after the last segment).
    pub operator: Operator,
    /// The trained model.
    pub from: ModelSize,
    /// The model the transform produced (None after the last segment).
    pub to: Option<ModelSize>,
    /// Optimizer steps so far.
    pub steps: usize,
    /// Training FLOPs so far (the model's FLOP counter, by default [`crate::cycle::flops::train_flops`],
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
    /// The SHA-256 of the rules as parsed, so that a resume with another rule file of the
    /// same name is refused.
    pub(super) rules: String,
    pub(super) config: serde_json::Value,
    /// The caller's options (`VCycle::with_run_options`).
    pub(super) run_options: serde_json::Value,
    pub(super) completed_segments: usize,
    pub(super) steps: usize,
    pub(super) train_flops: f64,
    pub(super) boundaries: Vec<BoundaryRecord>,
    /// The SHA-256 of every checkpoint file a resume may read, by path in the run directory.
    pub(super) files: BTreeMap<String, String>,
}

impl RunState {
    /// Why this state cannot be the record of a run of `segments` (whose checkpoints are
    /// `trained(s)` and `start(s)` for segment s), if it cannot.
    pub(super) fn inconsistency(
        &self,
        segments: &[Segment],
        trained: impl Fn(usize) -> PathBuf,
        start: impl Fn(usize) -> PathBuf,
    ) -> Option<String> {
        let done = self.completed_segments;
        if done > segments.len() {
            return Some(format!(
                "{done} segments completed, of {} in the cycle",
                segments.len()
            ));
        }
        if self.boundaries.len() != done {
            return Some(format!(
                "{} boundary records for {done} completed segments",
                self.boundaries.len()
            ));
        }
        let steps: usize = segments[..done].iter().map(|s| s.steps).sum();
        if self.steps != steps {
            return Some(format!(
                "{} steps, where the completed segments have {steps}",
                self.steps
            ));
        }
        let flops = self.boundaries.last().map_or(0.0, |b| b.train_flops);
        if !(self.train_flops.is_finite() && self.train_flops >= 0.0) || self.train_flops != flops {
            return Some(format!(
                "{} training FLOPs, where the last boundary recorded {flops}",
                self.train_flops
            ));
        }
        for (i, (b, s)) in self.boundaries.iter().zip(segments).enumerate() {
            let next = (i + 1 < segments.len()).then(|| start(i + 2));
            if b.boundary != i + 1
                || b.segment != s.name()
                || b.trained_checkpoint != trained(i + 1)
                || b.next_checkpoint != next
            {
                return Some(format!(
                    "boundary record {} is not that of segment {}",
                    i + 1,
                    s.name()
                ));
            }
        }
        None
    }
}

/// What a finished cycle gives back.
#[derive(Debug)]
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
