//! The segments of a cycle: where each lies, its budget, and the user's training for it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cycle::config::{DecaySegments, VCycleConfig};
use crate::cycle::schedule::{Decay, Schedule};

/// Where a segment lies in the run: followed by a coalesce, down; preceded by a growth (and
/// not followed by a coalesce), up; otherwise (a run's smallest model, or one it starts at),
/// bottom.
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
    /// Where the decay runs, in the segment's 1-based steps, when it spans the run
    /// ([`crate::Wsd`]): see [`Schedule::decay_span`]. None: over the segment, after its
    /// warm-up.
    pub decay_span: Option<(i64, i64)>,
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
            decay_span: self.decay_span,
        }
    }
}

/// The segments of `config`'s run, their artifacts under `run_dir`.
pub(super) fn plan(config: &VCycleConfig, run_dir: &std::path::Path) -> Vec<Segment> {
    let path = config.path_segments();
    let count = path.len();
    let total: usize = path.iter().map(|p| p.steps).sum();
    let mut offset = 0;
    let mut segments = Vec::with_capacity(count);
    for (i, p) in path.iter().enumerate() {
        let index = i + 1;
        let before = i.checked_sub(1).map(|j| path[j].level);
        let after = path.get(i + 1).map(|q| q.level);
        let grown = before.is_some_and(|b| b > p.level);
        let phase = match after {
            Some(a) if a > p.level => Phase::Down,
            _ if grown => Phase::Up,
            _ => Phase::Bottom,
        };
        let lc = &config.levels[p.level - 1];
        let (warmup_steps, decay, decay_span) = match &config.wsd {
            Some(wsd) => {
                let decay_steps = (total as f64 * wsd.decay_fraction).round() as i64;
                // The peak is at global step total − decay_steps, the floor at the last.
                let start = total as i64 - decay_steps - offset as i64;
                let warmup = match () {
                    _ if index == 1 => wsd.warmup_steps,
                    _ if grown => wsd.rewarm_steps,
                    _ => 0,
                };
                (
                    warmup,
                    wsd.decay,
                    Some((start, total as i64 - offset as i64)),
                )
            }
            None => {
                let decays = match config.decay_segments {
                    DecaySegments::Every => true,
                    DecaySegments::Last => index == count,
                };
                let decay = if decays {
                    config.decay
                } else {
                    Decay::Constant
                };
                (lc.warmup_steps, decay, None)
            }
        };
        let mut segment = Segment {
            index,
            count,
            phase,
            level: p.level,
            steps: p.steps,
            batches: p.steps * config.batches_per_step,
            epoch_steps: crate::cycle::budget::epoch_steps(p.steps, config.eval_every),
            learning_rate: p.learning_rate.unwrap_or(lc.learning_rate),
            warmup_steps,
            decay,
            decay_floor: config.decay_floor,
            decay_span,
            dir: PathBuf::new(),
        };
        segment.dir = run_dir
            .join(super::run_dir::SEGMENTS_DIR)
            .join(segment.name());
        offset += p.steps;
        segments.push(segment);
    }
    segments
}
