//! The V-cycle's configuration (docs/operator-contract.md §4): levels, step budgets, α, learning rates.

use burn::config::Config;
use vcycle_transform::{DepthInit, EmbeddingRule, SchemeSpec};

use crate::cycle::schedule::Decay;
use crate::error::{Error, Result};

/// What happens to the optimizer state (Adam moments) at a size change.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum OptimizerStatePolicy {
    /// A fresh optimizer and scheduler at every boundary, as the reference implementation does.
    Reset,
    /// Adam's (or AdamW's) moments mapped across each boundary with the weights' operators,
    /// the second moment through its square root, the step count continued; the scheduler is
    /// still fresh. See [`crate::checkpoint::moments`].
    Carry,
}

/// Which segments of a cycle decay their learning rate after the warm-up.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum DecaySegments {
    /// Only the last segment (the full model's last): it decays to the floor exactly at the end
    /// of the whole budget, as a single training run's schedule would; the other segments warm
    /// up and stay at their peak.
    Last,
    /// Every segment decays over its own steps.
    Every,
}

/// One level of the V-cycle. Level 1 is the full model: its `heads`, `layers` and schemes are
/// unused. Level i + 1 is coalesced from level i with level i + 1's schemes, and grown back
/// with the same schemes.
#[derive(Config, Debug, PartialEq)]
pub struct LevelConfig {
    /// Peak learning rate of this level's segments (down and bottom; up too unless
    /// `up_learning_rate` is set).
    pub learning_rate: f64,
    /// Peak learning rate of this level's up segments, after growing back to it (None:
    /// `learning_rate`). Half the level's rate did better in the benchmark (0.537 ± 0.035 vs
    /// 0.601 ± 0.044; docs/cost-benchmark), on one model only, so it is a recommendation
    /// rather than the default.
    #[config(default = "None")]
    pub up_learning_rate: Option<f64>,
    /// Linear warm-up steps at the start of each of this level's segments.
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// Attention heads of this level's model (None: as the level above).
    #[config(default = "None")]
    pub heads: Option<usize>,
    /// Layers of this level's model (None: as the level above).
    #[config(default = "None")]
    pub layers: Option<usize>,
    /// How the level above's heads (with their hidden and FFN blocks) group into this level's:
    /// `strided` (small head i takes large heads i, i + m, …), `adjacent`, `similar` (the
    /// most alike heads of the level above, recomputed from its saved weights when growing
    /// back), or explicit JSON groups such as `[[0,2],[1,3]]`. Strided stays the default:
    /// `similar` (both schemes) did not win beyond the spread in the cost benchmark
    /// (0.584 ± 0.038 vs 0.601 ± 0.044; docs/cost-benchmark).
    #[config(default = "SchemeSpec::Strided")]
    pub width_scheme: SchemeSpec,
    /// How the level above's layers group into this level's (same forms as `width_scheme`).
    #[config(default = "SchemeSpec::Strided")]
    pub depth_scheme: SchemeSpec,
}

/// One segment of an explicit path of model sizes ([`VCycleConfig::path`]).
#[derive(Config, Debug, PartialEq)]
pub struct PathSegment {
    /// The level (model size) it trains at: 1 is the full model.
    pub level: usize,
    /// Its optimizer steps.
    pub steps: usize,
    /// Its peak learning rate (None: the level's `learning_rate`).
    #[config(default = "None")]
    pub learning_rate: Option<f64>,
}

/// A warmup-stable-decay schedule over the whole run: a linear warm-up at its start, each
/// segment's peak rate until the decay, and a decay over the last `decay_fraction` of all
/// steps to `decay_floor` × the peak, in whichever segments it falls.
#[derive(Config, Debug, PartialEq)]
pub struct Wsd {
    /// Warm-up steps at the start of the run (the levels' `warmup_steps` are unused).
    #[config(default = 0)]
    pub warmup_steps: usize,
    /// The fraction of all steps the decay takes, at the end of the run.
    #[config(default = 0.2)]
    pub decay_fraction: f64,
    /// The decay's shape: [`Decay::Linear`] or [`Decay::Sqrt`] (1 − √t), the cooldowns of
    /// warmup-stable-decay studies; [`Decay::Cosine`] works too.
    #[config(default = "Decay::Linear")]
    pub decay: Decay,
    /// Steps of linear re-warm-up to the segment's peak after each growth (0: none). A
    /// re-warm-up rises to the peak, so it belongs in the stable phase.
    #[config(default = 0)]
    pub rewarm_steps: usize,
}

/// The run: by default the V-cycle (train the full model `down_steps`, coalesce; … ; train the
/// smallest model `bottom_steps`; grow (de-coalesce + interpolate with the saved weights of
/// that level) and train `up_steps` at each level on the way back up), or any `path` of model
/// sizes. A transition to a smaller level coalesces; one to a larger level grows, interpolating
/// with weight `alpha` with the last model trained at that size, or with `alpha = 1` (pure
/// de-coalescing) where none was, as when a run starts small.
///
/// ```
/// use vcycle_plugin::{LevelConfig, PathSegment, VCycleConfig, Wsd};
///
/// // Level 1 is the full model; level 2 has half its heads (so half its width) and layers.
/// let levels = || {
///     vec![
///         LevelConfig::new(1e-3).with_warmup_steps(50),
///         LevelConfig::new(2e-3).with_heads(Some(2)).with_layers(Some(2)),
///     ]
/// };
/// // The paper's V: 200 steps at full size, 600 at the bottom, 400 after growing back.
/// let v = VCycleConfig::new(levels(), 200, 600, 400);
/// assert_eq!(v.total_steps(), 1200);
/// // Late growth: the small model for 80% of 1,000 steps, grown once, warmup-stable-decay.
/// let late = VCycleConfig::late_growth(levels(), 1000, 0.8);
/// assert_eq!(late.total_steps(), 1000);
/// late.validate()?;
/// // Any other path, here a W, under a warmup-stable-decay schedule of the whole run.
/// let w = [(1, 100), (2, 300), (1, 100), (2, 300), (1, 200)]
///     .map(|(level, steps)| PathSegment::new(level, steps))
///     .to_vec();
/// let w = VCycleConfig::new(levels(), 0, 0, 0)
///     .with_path(Some(w))
///     .with_wsd(Some(Wsd::new().with_warmup_steps(50)));
/// w.validate()?;
/// assert_eq!(w.total_steps(), 1000);
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct VCycleConfig {
    /// The levels, the full model first; at least two.
    pub levels: Vec<LevelConfig>,
    /// Optimizer steps of each level on the way down (levels 1 … k − 1); 0 with a `path`.
    pub down_steps: usize,
    /// Optimizer steps at the bottom level k.
    pub bottom_steps: usize,
    /// Optimizer steps of each level on the way up (levels k − 1 … 1; the last segment is the
    /// full model's).
    pub up_steps: usize,
    /// Interpolation weight of the de-coalesced model when growing:
    /// θ = (1 − α)·θ_saved + α·θ_decoalesced. 0.5, the paper's value, beat 0.25 in the cost
    /// benchmark (FLOPs to the baseline's loss 0.601 ± 0.044 vs 0.832 ± 0.031 of the
    /// baseline's, 3 seeds; docs/cost-benchmark).
    #[config(default = 0.5)]
    pub alpha: f64,
    /// How the learning rate falls after each warm-up. Cosine: with a cosine decay to 10% in
    /// the last segment, the cycle's final validation loss fell by about 0.08 against a
    /// constant rate in the cost benchmark (2 levels, 2,400 steps, one seed), as the
    /// baseline's did with the same schedule (docs/cost-benchmark).
    #[config(default = "Decay::Cosine")]
    pub decay: Decay,
    /// The rate a decay ends at, as a fraction of the segment's peak (10%, the usual floor of
    /// transformer pre-training recipes).
    #[config(default = 0.1)]
    pub decay_floor: f64,
    /// Which segments decay. Last: the cycle as a whole then has the schedule of one training
    /// run (warm-ups at the boundaries aside), and the full model ends at the floor.
    #[config(default = "DecaySegments::Last")]
    pub decay_segments: DecaySegments,
    /// Optimizer state at boundaries. Reset, because carrying the moments did worse in the
    /// cost benchmark (0.687 ± 0.031 of the baseline's FLOPs to its loss vs 0.601 ± 0.044,
    /// 3 seeds; docs/cost-benchmark).
    #[config(default = "OptimizerStatePolicy::Reset")]
    pub optimizer_state: OptimizerStatePolicy,
    /// Initialisation of the layers growing adds. Copy (the paper's): zero did not win in the
    /// cost benchmark (0.592 ± 0.032 vs 0.601 ± 0.044, within the spread; docs/cost-benchmark).
    #[config(default = "DepthInit::Copy")]
    pub depth_init: DepthInit,
    /// Embedding rule of the transform.
    #[config(default = "EmbeddingRule::Exact")]
    pub embedding_rule: EmbeddingRule,
    /// Data-loader batches one optimizer step consumes: the gradient-accumulation factor times
    /// the number of devices of a multi-device strategy (1 for plain single-device training).
    #[config(default = 1)]
    pub batches_per_step: usize,
    /// Prove the rules before the first step: coalesce the fresh model through every level
    /// and check, on the first validation batch, that growing it back in width with α = 1
    /// keeps its loss (a wrong `in`/`out` direction in a rule file changes it). Turn off only
    /// for a model whose function duplicated units change.
    #[config(default = true)]
    pub prove_rules: bool,
    /// Validation batches for the boundary log's losses (None: the whole validation loader).
    #[config(default = "None")]
    pub boundary_valid_batches: Option<usize>,
    /// Optimizer steps between validation passes inside a segment: each segment runs as Burn
    /// epochs of this many steps (the last takes the remainder) and Burn validates after each,
    /// so the metrics give a validation curve. None: one epoch, validated at its end.
    #[config(default = "None")]
    pub eval_every: Option<usize>,
    /// The segments in order, for a run that is not the V of `down_steps`, `bottom_steps` and
    /// `up_steps` (which must then be 0): a W, multi-stage or late growth, a run that starts
    /// small. The first segment may be at any level: a run starting below level 1 coalesces
    /// the model it is given first.
    #[config(default = "None")]
    pub path: Option<Vec<PathSegment>>,
    /// A warmup-stable-decay schedule of the whole run instead of per-segment schedules
    /// (`decay`, `decay_segments` and the levels' `warmup_steps` are then unused;
    /// `decay_floor` is the floor).
    #[config(default = "None")]
    pub wsd: Option<Wsd>,
}

impl VCycleConfig {
    /// Checks the configuration before anything runs.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::VCycleConfig(m));
        if self.levels.len() < 2 {
            return bad(format!(
                "a V-cycle needs at least 2 levels, got {}",
                self.levels.len()
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha must lie in [0, 1], got {}", self.alpha));
        }
        if !(0.0..=1.0).contains(&self.decay_floor) {
            return bad(format!(
                "decay_floor must lie in [0, 1], got {}",
                self.decay_floor
            ));
        }
        if self.batches_per_step == 0 {
            return bad("batches_per_step must be at least 1".into());
        }
        if self.eval_every == Some(0) {
            return bad("eval_every must be at least 1 step".into());
        }
        if let Some(wsd) = &self.wsd
            && !(wsd.decay_fraction > 0.0 && wsd.decay_fraction <= 1.0)
        {
            return bad(format!(
                "wsd.decay_fraction must lie in (0, 1], got {}",
                wsd.decay_fraction
            ));
        }
        if let Some(path) = &self.path {
            if self.down_steps + self.bottom_steps + self.up_steps != 0 {
                return bad(
                    "a path sets its own steps: down_steps, bottom_steps and up_steps must be 0"
                        .into(),
                );
            }
            if path.len() < 2 {
                return bad(format!(
                    "a path needs at least 2 segments, got {}",
                    path.len()
                ));
            }
            for (i, segment) in path.iter().enumerate() {
                let n = i + 1;
                if !(1..=self.levels.len()).contains(&segment.level) {
                    return bad(format!(
                        "path segment {n}: level {} does not exist (levels 1 to {})",
                        segment.level,
                        self.levels.len()
                    ));
                }
                if i > 0 && path[i - 1].level == segment.level {
                    return bad(format!(
                        "path segments {} and {n} are both at level {}: join them",
                        n - 1,
                        segment.level
                    ));
                }
                if let Some(lr) = segment.learning_rate
                    && !(lr.is_finite() && lr > 0.0 && lr <= 1.0)
                {
                    return bad(format!(
                        "path segment {n}: learning rates must lie in (0, 1], got {lr}"
                    ));
                }
            }
            if path.last().is_some_and(|s| s.level != 1) {
                return bad("a path must end at level 1, the full model".into());
            }
        }
        if self.optimizer_state == OptimizerStatePolicy::Carry {
            let path = self.path_segments();
            for (i, pair) in path.windows(2).enumerate() {
                let grows = pair[1].level < pair[0].level;
                if grows && !path[..=i].iter().any(|s| s.level == pair[1].level) {
                    return bad(format!(
                        "path segment {} grows to level {}, where no model was trained: \
                         carrying the Adam moments needs one (use optimizer_state = Reset)",
                        i + 2,
                        pair[1].level
                    ));
                }
            }
        }
        for (i, level) in self.levels.iter().enumerate() {
            let n = i + 1;
            for lr in std::iter::once(level.learning_rate).chain(level.up_learning_rate) {
                if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
                    return bad(format!(
                        "level {n}: learning rates must lie in (0, 1], got {lr}"
                    ));
                }
            }
            if level.heads == Some(0) || level.layers == Some(0) {
                return bad(format!("level {n}: heads and layers must be positive"));
            }
            if n > 1 && level.heads.is_none() && level.layers.is_none() {
                return bad(format!(
                    "level {n} sets neither heads nor layers, so it is the same size as level {}",
                    n - 1
                ));
            }
        }
        Ok(())
    }

    /// The number of levels k.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.path_segments().iter().map(|s| s.steps).sum()
    }

    /// Late growth: train level 2 (the smaller model, started by coalescing the fresh full
    /// model) for `grow_after` of `total_steps`, grow it once to level 1 (α = 1: nothing was
    /// trained at the full size to interpolate with) and train the rest, under a
    /// warmup-stable-decay schedule ([`Wsd`]'s defaults) over the whole run. Exact growth in
    /// depth is `with_depth_init(DepthInit::Zero)`.
    pub fn late_growth(levels: Vec<LevelConfig>, total_steps: usize, grow_after: f64) -> Self {
        let small = (total_steps as f64 * grow_after).round() as usize;
        VCycleConfig::new(levels, 0, 0, 0)
            .with_path(Some(vec![
                PathSegment::new(2, small),
                PathSegment::new(1, total_steps.saturating_sub(small)),
            ]))
            .with_wsd(Some(Wsd::new()))
    }

    /// The segments in order as (level, steps, peak learning rate): the explicit path, or the
    /// V.
    pub(crate) fn path_segments(&self) -> Vec<PathSegment> {
        if let Some(path) = &self.path {
            return path.clone();
        }
        let k = self.levels.len();
        let down = (1..k).map(|l| PathSegment::new(l, self.down_steps));
        let bottom = std::iter::once(PathSegment::new(k, self.bottom_steps));
        let up = (1..k).rev().map(|l| {
            PathSegment::new(l, self.up_steps)
                .with_learning_rate(self.levels[l - 1].up_learning_rate)
        });
        down.chain(bottom).chain(up).collect()
    }
}
