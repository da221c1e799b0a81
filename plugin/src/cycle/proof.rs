//! Proving the rules before the first step. A rule file whose shapes are wrong would be
//! refused only at the first boundary, after a whole segment has trained, and one whose axis
//! directions are wrong (an `in` axis marked `out`) would never be refused: its coalesced
//! tensors are just wrong by a constant factor. So before training, the run
//!
//! 1. coalesces the fresh model through every level of the path, as the boundaries will
//!    (shapes, schemes and `config.json` checked by the transform), and
//! 2. proves the directions: a width-coalesced model grown back with α = 1 computes exactly what
//!    it computed (docs/operator-contract.md §3, property 2), so the validation loss of each
//!    width-coalesced level and of its growth to the level above must agree. The fresh
//!    weights are first scaled up, so that a wrong direction changes the loss well beyond
//!    rounding (a fresh model's outputs are nearly uniform whatever its weights' scale).

use std::path::{Path, PathBuf};

use burn::module::{ModuleMapper, Param};
use burn::tensor::Tensor;
use burn::train::{InferenceStep, ValidLoader, metric::Adaptor, metric::LossInput};
use vcycle_transform::{EmbeddingRule, Job};

use super::run_dir::remove_path;
use super::transition::INIT;
use super::{VCycle, VCycleModel};
use crate::error::{Error, Result};

/// Where the proof's checkpoints go, relative to the run directory (removed afterwards, and
/// swept as a leftover if a kill interrupts the proof).
const PROOF_DIR: &str = "checkpoints/00-proof";

/// How much the fresh weights are scaled for the proof.
const WEIGHT_SCALE: f32 = 8.0;

/// The largest relative difference of the two losses that passes: width growth is exact up to
/// rounding (below 1e-6 relative on the bundled models; a wrong direction moved GPT-2's loss
/// by 3e-3 to 6e-2 relative, depending on the initialisation).
const TOLERANCE: f64 = 1e-4;

/// Multiplies every float parameter by a constant.
struct Scale(f32);

impl ModuleMapper for Scale {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let scale = self.0;
        param.map(|tensor| tensor.mul_scalar(scale))
    }
}

impl<M> VCycle<M>
where
    M: VCycleModel,
    <M as InferenceStep>::Output: Adaptor<LossInput>,
{
    /// Proves the rules on the run's fresh model (saved as `checkpoints/00-init`) before the
    /// first step.
    pub(super) fn prove_rules(&self, model: &M, valid: &ValidLoader<M>) -> Result<()> {
        let dir = self.run_dir.join(PROOF_DIR);
        if dir.exists() {
            remove_path(&dir)?;
        }
        let result = self.prove_in(model, &dir, valid);
        let removed = if dir.exists() {
            remove_path(&dir)
        } else {
            Ok(())
        };
        result.and(removed)
    }

    fn prove_in(&self, model: &M, dir: &Path, valid: &ValidLoader<M>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
        let mut levels: Vec<usize> = self.segments().iter().map(|s| s.level).collect();
        levels.push(1);
        levels.sort_unstable();
        levels.dedup();
        let at = |kind: &str, level: usize| -> PathBuf { dir.join(format!("{kind}-L{level}")) };

        // 1. Every level, coalesced level by level as the boundaries coalesce.
        let mut from = self.run_dir.join(INIT);
        for &level in &levels[1..] {
            let to = at("shapes", level);
            self.coalesce(&from, None, level, &to)?;
            from = to;
        }

        // 2. The directions, in width only (depth growth by copying stacks layers), on one
        // batch (a loader may draw new masks or crops at every pass).
        let batch = self.first_valid_batch(valid)?;
        let full = model.sizes();
        let mut large = at("width", 1);
        model
            .clone()
            .map(&mut Scale(WEIGHT_SCALE))
            .save_dir(&large)?;
        let (mut large_level, mut large_heads) = (1, full.dims.heads);
        for &level in &levels[1..] {
            let (heads, _) = self.level_sizes(level);
            let Some(heads) = heads else { continue };
            let mut options = self.options(level, Some(heads), Some(full.dims.layers))?;
            options.target.embedding_rule = EmbeddingRule::Exact;
            let small = at("width", level);
            Job::coalesce(&large, &options)?.write(&small, false)?;

            options.target.heads = Some(large_heads);
            let grown = at("grown", level);
            Job::grow(&small, &large, 1.0, &options)?.write(&grown, false)?;

            let small_loss = self.proof_loss(model, &small, &batch)?;
            let grown_loss = self.proof_loss(model, &grown, &batch)?;
            let difference = (grown_loss - small_loss).abs() / small_loss.abs().max(1.0);
            log::debug!(
                "rules proof: level {level} loss {small_loss}, grown to level {large_level}: {grown_loss}"
            );
            if difference.is_nan() || difference > TOLERANCE {
                return Err(Error::RulesProof {
                    arch: self.arch_name(),
                    level,
                    to: large_level,
                    small: small_loss,
                    grown: grown_loss,
                });
            }
            large = small;
            (large_level, large_heads) = (level, heads);
        }
        Ok(())
    }

    /// The loss on `batch` of the model in `dir` (a model like `like`).
    fn proof_loss(&self, like: &M, dir: &Path, batch: &<M as InferenceStep>::Input) -> Result<f64> {
        let model = like.load_dir(dir, &self.device)?;
        self.mean_loss(&model, std::iter::once(Ok(batch.clone())), 1)
    }
}
