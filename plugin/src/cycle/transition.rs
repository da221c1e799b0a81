//! The transforms between segments: coalescing to a smaller level, growing to a larger one
//! (interpolated with the last model trained at that size, or with α = 1 where none was), and
//! the operator the boundary log records.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::train::{InferenceStep, metric::Adaptor, metric::LossInput};
use serde::{Deserialize, Serialize};
use vcycle_transform::Job;

use super::{VCycle, VCycleModel};
use crate::checkpoint::moments;
use crate::error::Result;

/// What a boundary did to the trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Operator {
    /// Coalesced into a smaller level.
    Coalesce,
    /// Grown to a larger level: de-coalesced, then interpolated with weight `alpha` with
    /// `interpolated_with`, the last model trained at that size (None, and `alpha` 1, where
    /// no model was trained at that size: pure growth).
    Grow {
        /// Weight of the de-coalesced model.
        alpha: f64,
        /// The checkpoint interpolated with, relative to the run directory.
        interpolated_with: Option<PathBuf>,
    },
    /// The run's last segment: nothing follows.
    End,
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded as a string is, for tables.
        f.pad(&match self {
            Operator::Coalesce => "coalesce".to_string(),
            Operator::Grow { alpha, .. } => format!("grow (alpha = {alpha})"),
            Operator::End => "end".to_string(),
        })
    }
}

impl<M> VCycle<M>
where
    M: VCycleModel,
    <M as InferenceStep>::Output: Adaptor<LossInput>,
{
    /// The heads and layers of `level` (None: as the full model's).
    pub(super) fn level_sizes(&self, level: usize) -> (Option<usize>, Option<usize>) {
        let levels = &self.config.levels[1..level.min(self.config.levels.len())];
        let heads = levels.iter().rev().find_map(|l| l.heads);
        let layers = levels.iter().rev().find_map(|l| l.layers);
        (heads, layers)
    }

    /// Coalesces the checkpoint `from` into `level` at `to` (and its moments, if given).
    pub(super) fn coalesce(
        &self,
        from: &Path,
        moments_from: Option<&Path>,
        level: usize,
        to: &Path,
    ) -> Result<Operator> {
        let (heads, layers) = self.level_sizes(level);
        let options = self.options(level, heads, layers)?;
        let job = Job::coalesce(from, &options)?;
        self.warn(job.warnings());
        job.write(to, false)?;
        self.warn(&job.write_warnings());
        if let (Some(moments_from), Some(moments_to)) = (moments_from, self.moments_of(to)) {
            let job = moments::coalesce_job(moments_from, &options);
            moments::map(moments_from, &moments_to, job, |w| self.warn(w))?;
        }
        Ok(Operator::Coalesce)
    }

    /// Grows the checkpoint `from`, trained at the level of segment `index`, to the level of
    /// the segment after it, at `to`.
    pub(super) fn grow(
        &self,
        index: usize,
        from: &Path,
        moments_from: Option<&Path>,
        to: &Path,
    ) -> Result<Operator> {
        let segments = self.segments();
        let level = segments[index - 1].level;
        let target = segments[index].level;
        let saved = (1..index)
            .rev()
            .find(|&s| segments[s - 1].level == target)
            .map(|s| self.trained_checkpoint(s));
        // Without a model trained at the target size, the fresh model coalesced to it gives
        // the shapes; α = 1 takes nothing of its weights.
        let template = match &saved {
            Some(rel) => self.run_dir.join(rel),
            None if target == 1 => self.run_dir.join(INIT),
            None => {
                let dir = self.run_dir.join(self.template_checkpoint(index, target));
                self.coalesce(&self.run_dir.join(INIT), None, target, &dir)?;
                dir
            }
        };
        let alpha = if saved.is_some() {
            self.config.alpha
        } else {
            1.0
        };
        let (_, large) = vcycle_transform::open_model(&template, &self.arch)?;
        let options = self.options(level, Some(large.dims.heads), Some(large.dims.layers))?;
        let job = Job::grow(from, &template, alpha, &options)?;
        self.warn(job.warnings());
        job.write(to, false)?;
        self.warn(&job.write_warnings());
        if let (Some(moments_from), Some(moments_to), Some(saved)) =
            (moments_from, self.moments_of(to), &saved)
        {
            let large = self.moments_dir(saved);
            let job = moments::grow_job(moments_from, &large, alpha, &options);
            moments::map(moments_from, &moments_to, job, |w| self.warn(w))?;
        }
        if saved.is_none() && target != 1 {
            super::run_dir::remove_path(&template)?;
        }
        Ok(Operator::Grow {
            alpha,
            interpolated_with: saved,
        })
    }

    /// The moments directory beside checkpoint `dir` when moments are carried.
    fn moments_of(&self, dir: &Path) -> Option<PathBuf> {
        let carry =
            self.config.optimizer_state == crate::cycle::config::OptimizerStatePolicy::Carry;
        let rel = dir.strip_prefix(&self.run_dir).ok()?;
        carry.then(|| self.moments_dir(rel))
    }

    /// Where the fresh model coalesced to `level` is made for growth `index`.
    fn template_checkpoint(&self, index: usize, level: usize) -> PathBuf {
        Path::new(super::run_dir::CHECKPOINTS_DIR).join(format!("{index:02}-template-L{level}"))
    }
}

/// The fresh full-size model the run started from, relative to the run directory.
pub(super) const INIT: &str = "checkpoints/00-init";
