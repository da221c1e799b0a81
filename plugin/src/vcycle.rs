//! The V-cycle driver (docs/operator-contract.md §4): one `SupervisedTraining::launch` per segment, the transform
//! library at every boundary, a checkpoint directory and a state file after each, so a killed
//! run resumes from its last completed boundary.
//!
//! Segments of a k-level cycle: `down` at levels 1 … k − 1, `bottom` at level k, `up` at levels
//! k − 1 … 1. After a down segment the trained model is saved (θ_i) and coalesced to the next
//! level; after the bottom and every up segment but the last it is grown (de-coalesced to the
//! level above and interpolated with that level's θ_i, weight α).

use std::fmt;
use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::{AdamWConfig, ModuleOptimizer, OptimizerRecord};
use burn::tensor::Device;
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::{Adaptor, LossInput, LossMetric, Metric, MetricMetadata, Numeric};
use burn::train::{
    InferenceStep, Learner, LearnerModel, SupervisedTraining, TrainLoader, TrainStep, ValidLoader,
};
use serde::{Deserialize, Serialize};
use vcycle_transform::{ArchChoice, Job, Options, SchemeSpec, Target};

use crate::budget::ExactBatches;
use crate::config::{LevelConfig, OptimizerStatePolicy, VCycleConfig};
use crate::error::{Error, Result, io, json};
use crate::flops::SequenceBatch;
use crate::hf::{self, HfModel};
use crate::moments::{self, Discard, LastRecord, Moments};
use crate::schedule::WarmupConstantLr;

/// Counts the training FLOPs of one batch (forward and backward).
pub type FlopCounter<I> = Arc<dyn Fn(&I) -> f64 + Send + Sync>;

/// A model the V-cycle can train: a Burn learner model whose checkpoints its rules describe
/// ([`HfModel`]), trained on batches of token sequences.
pub trait VCycleModel: LearnerModel + HfModel + TrainStep<Input: SequenceBatch> {
    /// The training FLOPs of a batch at this model's size; by default
    /// [`crate::train_flops`] at the batch's shape.
    fn flop_counter(&self) -> Result<FlopCounter<<Self as TrainStep>::Input>> {
        crate::flops::default_flop_counter(self)
    }
}

/// Where a segment lies in the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Down,
    Bottom,
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
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// The artifact directory for this segment's `SupervisedTraining` (metrics, logs, Burn
    /// checkpoints).
    pub dir: PathBuf,
}

impl Segment {
    /// `03-up-L1`.
    pub fn name(&self) -> String {
        format!("{:02}-{}-L{}", self.index, self.phase, self.level)
    }
}

/// Builds the user's `SupervisedTraining` for a segment: metrics, renderer, training strategy
/// (devices), checkpointing — everything the user would configure without the V-cycle. The
/// driver sets `num_epochs` on the result (one per entry of `Segment::epoch_steps`): the data
/// loader it passes yields exactly the segment's budget. Any `FnMut(&Segment, TrainLoader<M>, ValidLoader<M>) -> SupervisedTraining<M>`
/// is one.
pub trait SegmentTraining<M: LearnerModel> {
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

/// A model's size as the boundary log reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSize {
    pub level: usize,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub ffn: usize,
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
    pub phase: Phase,
    /// `coalesce`, `grow` or `end` (after the last segment).
    pub operator: String,
    /// The trained model.
    pub from: ModelSize,
    /// The model the transform produced (None after the last segment).
    pub to: Option<ModelSize>,
    /// Optimizer steps so far.
    pub steps: usize,
    /// Training FLOPs so far (the model's analytic count, e.g.
    /// [`crate::Gpt2Config::train_flops`], over every batch trained on).
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
            " | steps {}, train FLOPs {:.3e}, {:.1} s | valid loss {:.4}",
            self.steps, self.train_flops, self.segment_seconds, self.valid_loss_before
        )?;
        if let Some(after) = self.valid_loss_after {
            write!(f, " -> {after:.4}")?;
        }
        Ok(())
    }
}

/// The run directory's `state.json`: what is done.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    format: u32,
    arch: String,
    config: serde_json::Value,
    completed_segments: usize,
    steps: usize,
    train_flops: f64,
    boundaries: Vec<BoundaryRecord>,
}

/// What a finished cycle gives back.
pub struct VCycleOutcome<M> {
    /// The full-size model after the last segment (train mode).
    pub model: M,
    /// Its HF directory (`RUN/final`).
    pub final_dir: PathBuf,
    pub boundaries: Vec<BoundaryRecord>,
    pub steps: usize,
    pub train_flops: f64,
}

type OptimizerFactory = Box<dyn FnMut(&Segment) -> ModuleOptimizer>;
type SchedulerFactory = Box<dyn FnMut(&Segment) -> ModuleLrScheduler>;

/// The V-cycle driver.
pub struct VCycle<M> {
    config: VCycleConfig,
    run_dir: PathBuf,
    device: Device,
    optimizer: OptimizerFactory,
    scheduler: SchedulerFactory,
    quiet: bool,
    /// The model's architecture, as the transform library is given it.
    arch: ArchChoice,
    _model: PhantomData<fn() -> M>,
}

const STATE_FILE: &str = "state.json";
const LOG_FILE: &str = "boundaries.json";
const CONFIG_FILE: &str = "vcycle.json";
/// The run directory's folder of Adam moments (`optimizer_state = carry`), one directory per
/// checkpoint that feeds a transform, named as that checkpoint.
const MOMENTS_DIR: &str = "moments";
const STATE_FORMAT: u32 = 1;

impl<M> VCycle<M>
where
    M: VCycleModel,
    <M as InferenceStep>::Output: Adaptor<LossInput>,
{
    /// A driver for `config` writing into `run_dir`, training on `device` (made autodiff if it
    /// is not). Defaults: AdamW with gradient-norm clipping at 1.0, a fresh one per segment;
    /// linear warm-up to the level's learning rate, then constant.
    pub fn new(config: VCycleConfig, run_dir: impl Into<PathBuf>, device: Device) -> Result<Self> {
        config.validate()?;
        let device = if device.is_autodiff() {
            device
        } else {
            device.autodiff()
        };
        Ok(VCycle {
            config,
            run_dir: run_dir.into(),
            device,
            optimizer: Box::new(|_| default_optimizer()),
            scheduler: Box::new(|s| WarmupConstantLr::new(s.learning_rate, s.warmup_steps).into()),
            quiet: false,
            arch: ArchChoice::Rules(Box::new(M::layout()?.rules().clone())),
            _model: PhantomData,
        })
    }

    /// Builds the optimizer of each segment (called once per segment: the state is reset).
    pub fn with_optimizer(mut self, f: impl FnMut(&Segment) -> ModuleOptimizer + 'static) -> Self {
        self.optimizer = Box::new(f);
        self
    }

    /// Builds the learning-rate scheduler of each segment (stepped once per optimizer step).
    pub fn with_scheduler(
        mut self,
        f: impl FnMut(&Segment) -> ModuleLrScheduler + 'static,
    ) -> Self {
        self.scheduler = Box::new(f);
        self
    }

    /// Whether to print the boundary log lines (default: yes).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    pub fn config(&self) -> &VCycleConfig {
        &self.config
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The segments of the cycle, in order.
    pub fn segments(&self) -> Vec<Segment> {
        let c = &self.config;
        let k = c.levels.len();
        let count = 2 * k - 1;
        (1..=count)
            .map(|index| {
                let (phase, level, steps) = if index < k {
                    (Phase::Down, index, c.down_steps)
                } else if index == k {
                    (Phase::Bottom, k, c.bottom_steps)
                } else {
                    (Phase::Up, 2 * k - index, c.up_steps)
                };
                let lc = &c.levels[level - 1];
                let learning_rate = match phase {
                    Phase::Up => lc.up_learning_rate.unwrap_or(lc.learning_rate),
                    Phase::Down | Phase::Bottom => lc.learning_rate,
                };
                let epoch_steps = crate::budget::epoch_steps(steps, c.eval_every);
                let mut segment = Segment {
                    index,
                    count,
                    phase,
                    level,
                    steps,
                    batches: steps * c.batches_per_step,
                    epoch_steps,
                    learning_rate,
                    warmup_steps: lc.warmup_steps,
                    dir: PathBuf::new(),
                };
                segment.dir = self.run_dir.join("segments").join(segment.name());
                segment
            })
            .collect()
    }

    /// Whether `run_dir` holds a run (a state file).
    pub fn has_run(&self) -> bool {
        self.run_dir.join(STATE_FILE).is_file()
    }

    /// Starts a new cycle from `model` (the full-size model, level 1). Refuses a run directory
    /// that already holds a run: see [`VCycle::resume`].
    pub fn run(
        &mut self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl SegmentTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        if self.has_run() {
            return Err(Error::Resume {
                path: self.run_dir.clone(),
                message: "the directory already holds a run; resume it or choose another".into(),
            });
        }
        fs::create_dir_all(self.run_dir.join("checkpoints")).map_err(io(&self.run_dir))?;
        let config = self.config_json()?;
        hf::write_file_atomically(
            &self.run_dir.join(CONFIG_FILE),
            pretty(&config, &self.run_dir)?.as_bytes(),
        )?;
        hf::save_hf(&model, &self.run_dir.join(self.start_checkpoint(1)))?;
        let state = RunState {
            format: STATE_FORMAT,
            arch: self.arch_name(),
            config,
            completed_segments: 0,
            steps: 0,
            train_flops: 0.0,
            boundaries: Vec::new(),
        };
        let state = self.write_state(&state)?;
        self.drive(state, Some(model), train, valid, training)
    }

    /// Continues the run in `run_dir` from its last completed boundary. The configuration must
    /// be the one the run started with.
    pub fn resume(
        &mut self,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl SegmentTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        let state = self.read_state()?;
        // Remove what an interrupted segment or boundary left behind: the checkpoints of an
        // unfinished boundary and every temporary. The state names a directory only once it
        // is complete, so a named directory is never half-written.
        let keep: Vec<PathBuf> = (1..=state.completed_segments + 1)
            .map(|s| self.start_checkpoint(s))
            .chain((1..=state.completed_segments).map(|s| self.trained_checkpoint(s)))
            .map(|p| self.run_dir.join(p))
            .collect();
        clear_leftovers(&self.run_dir.join("checkpoints"), &keep, true)?;
        let moments = self.run_dir.join(MOMENTS_DIR);
        if moments.is_dir() {
            let keep: Vec<PathBuf> = keep
                .iter()
                .filter_map(|p| p.file_name())
                .map(|name| moments.join(name))
                .collect();
            clear_leftovers(&moments, &keep, true)?;
        }
        let finished = state.completed_segments >= self.segments().len();
        let final_dir = finished.then(|| self.run_dir.join("final"));
        clear_leftovers(&self.run_dir, final_dir.as_slice(), false)?;
        // A kill between the log's and the state's writes leaves the log one record ahead.
        let state = self.write_state(&state)?;
        for segment in self.segments().iter().skip(state.completed_segments) {
            if segment.dir.exists() {
                remove_path(&segment.dir)?;
            }
        }
        self.drive(state, None, train, valid, training)
    }

    /// Resumes the run in `run_dir` if there is one, else starts one from `model()`.
    pub fn run_or_resume(
        &mut self,
        model: impl FnOnce() -> Result<M>,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl SegmentTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        if self.has_run() {
            self.resume(train, valid, training)
        } else {
            self.run(model()?, train, valid, training)
        }
    }

    fn config_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.config).map_err(json(self.run_dir.join(CONFIG_FILE)))
    }

    fn read_state(&self) -> Result<RunState> {
        let path = self.run_dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let state: RunState = serde_json::from_str(&text).map_err(json(&path))?;
        let resume_error = |message: String| Error::Resume {
            path: self.run_dir.clone(),
            message,
        };
        if state.format != STATE_FORMAT {
            return Err(resume_error(format!(
                "state format {} (this version writes {STATE_FORMAT})",
                state.format
            )));
        }
        if state.arch != self.arch_name() {
            return Err(resume_error(format!(
                "the run trains a `{}` model, not `{}`",
                state.arch,
                self.arch_name()
            )));
        }
        if state.config != self.config_json()? {
            return Err(resume_error(format!(
                "the V-cycle configuration differs from the run's ({})",
                self.run_dir.join(CONFIG_FILE).display()
            )));
        }
        Ok(state)
    }

    /// Writes the boundary log and the state file, and returns the state as a resumed run
    /// will read it (JSON does not round-trip every f64 bit for bit), so a finished and a
    /// resumed run report identical records.
    fn write_state(&self, state: &RunState) -> Result<RunState> {
        let state_path = self.run_dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(state).map_err(json(&state_path))?;
        let log_path = self.run_dir.join(LOG_FILE);
        let log = serde_json::to_string_pretty(&state.boundaries).map_err(json(&log_path))?;
        hf::write_file_atomically(&log_path, (log + "\n").as_bytes())?;
        hf::write_file_atomically(&state_path, (text.clone() + "\n").as_bytes())?;
        serde_json::from_str(&text).map_err(json(&state_path))
    }

    /// The checkpoint a segment starts from, relative to the run directory.
    fn start_checkpoint(&self, segment: usize) -> PathBuf {
        let name = if segment <= 1 {
            "00-init".to_string()
        } else {
            let level = self
                .segments()
                .get(segment - 1)
                .map_or(1, |s: &Segment| s.level);
            format!("{:02}-to-L{level}", segment - 1)
        };
        Path::new("checkpoints").join(name)
    }

    /// The checkpoint of the model a segment trained, relative to the run directory.
    fn trained_checkpoint(&self, segment: usize) -> PathBuf {
        let name = self
            .segments()
            .get(segment.saturating_sub(1))
            .map_or_else(|| format!("{segment:02}"), Segment::name);
        Path::new("checkpoints").join(name)
    }

    fn level(&self, level: usize) -> &LevelConfig {
        &self.config.levels[level - 1]
    }

    /// The name of the model's rules (`gpt2`, a rule file's `name`), recorded in the state.
    fn arch_name(&self) -> String {
        match &self.arch {
            ArchChoice::Rules(rules) => rules.name.clone(),
            ArchChoice::Preset(name) => name.clone(),
            ArchChoice::Detect => String::new(),
        }
    }

    /// Transform options for moving between `level` and the level above it, with `level`'s
    /// schemes.
    fn options(&self, level: usize, heads: Option<usize>, layers: Option<usize>) -> Options {
        let lc = self.level(level);
        Options {
            arch: self.arch.clone(),
            target: Target {
                heads,
                kv_heads: None,
                layers,
                width_scheme: lc
                    .width_scheme
                    .parse::<SchemeSpec>()
                    .unwrap_or(SchemeSpec::Strided),
                depth_scheme: lc
                    .depth_scheme
                    .parse::<SchemeSpec>()
                    .unwrap_or(SchemeSpec::Strided),
                embedding_rule: self.config.embedding_rule.into(),
                depth_init: self.config.depth_init.into(),
            },
            shard_size: None,
        }
    }

    fn size(&self, dir: &Path, level: usize, params: usize) -> Result<ModelSize> {
        let (_, anatomy) = vcycle_transform::open_model(dir, &self.arch)?;
        let d = &anatomy.dims;
        Ok(ModelSize {
            level,
            layers: d.layers,
            hidden: d.hidden,
            heads: d.heads,
            ffn: d.ffn,
            params,
        })
    }

    /// Mean validation loss (Burn's `LossMetric` over the validation batches).
    fn valid_loss(&self, model: &M, valid: &ValidLoader<M>) -> Result<f64> {
        let model = model.valid();
        let mut metric = LossMetric::new();
        let limit = self.config.boundary_valid_batches.unwrap_or(usize::MAX);
        let total = valid.num_items();
        let mut iter = valid.iter();
        let mut batches = 0;
        while batches < limit {
            let Some(item) = iter.next() else { break };
            let item = item.map_err(|e| Error::Training {
                segment: 0,
                name: "validation".into(),
                message: e.to_string(),
            })?;
            let output = InferenceStep::step(&model, item);
            let input: LossInput = output.adapt();
            batches += 1;
            let metadata = MetricMetadata {
                progress: Progress::new(batches, total, None),
                iteration: Some(batches),
                lr: None,
            };
            metric
                .update(&input, &metadata)
                .map_err(|e| Error::Training {
                    segment: 0,
                    name: "validation".into(),
                    message: e.to_string(),
                })?;
        }
        Ok(metric
            .running_value()
            .map_or(f64::NAN, |entry| entry.current()))
    }

    fn drive(
        &mut self,
        mut state: RunState,
        mut model: Option<M>,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        mut training: impl SegmentTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        let segments = self.segments();
        let final_dir = self.run_dir.join("final");
        if state.completed_segments >= segments.len() {
            let model = M::load_hf(&final_dir, &self.device)?;
            return Ok(VCycleOutcome {
                model,
                final_dir,
                boundaries: state.boundaries,
                steps: state.steps,
                train_flops: state.train_flops,
            });
        }
        for segment in segments.iter().skip(state.completed_segments) {
            let start_dir = self.run_dir.join(self.start_checkpoint(segment.index));
            let current = match model.take() {
                Some(m) => m,
                None => M::load_hf(&start_dir, &self.device)?,
            };
            let carried = self.carried_moments(segment.index, &current)?;
            let started = Instant::now();
            let (trained, flops, optimizer) =
                self.train_segment(segment, current, carried, &train, &valid, &mut training)?;
            let seconds = started.elapsed().as_secs_f64();
            state.steps += segment.steps;
            state.train_flops += flops;

            let trained_rel = self.trained_checkpoint(segment.index);
            let trained_dir = self.run_dir.join(&trained_rel);
            hf::save_hf(&trained, &trained_dir)?;
            let from = self.size(&trained_dir, segment.level, trained.num_params())?;
            let valid_loss_before = self.valid_loss(&trained, &valid)?;

            let last = segment.index == segments.len();
            // With carry, the moments are saved beside every checkpoint that feeds a transform.
            let trained_moments = match optimizer {
                Some(record) if !last => {
                    let dir = self.moments_dir(&trained_rel);
                    Moments::from_record(record, &segment.name())?.save(&trained, &dir)?;
                    Some(dir)
                }
                _ => None,
            };
            let (operator, next, to, valid_loss_after, next_rel) = if last {
                hf::save_hf(&trained, &final_dir)?;
                ("end".to_string(), None, None, None, None)
            } else {
                let next_rel = self.start_checkpoint(segment.index + 1);
                let next_dir = self.run_dir.join(&next_rel);
                let operator = match segment.phase {
                    Phase::Down => {
                        let below = self.level(segment.level + 1);
                        let options = self.options(segment.level + 1, below.heads, below.layers);
                        let job = Job::coalesce(&trained_dir, &options)?;
                        self.warn(job.warnings());
                        job.write(&next_dir, false)?;
                        self.warn(&job.write_warnings());
                        if let Some(trained) = &trained_moments {
                            let job = moments::coalesce_job(trained, &options);
                            let next = self.moments_dir(&next_rel);
                            moments::map(trained, &next, job, |w| self.warn(w))?;
                        }
                        "coalesce".to_string()
                    }
                    Phase::Bottom | Phase::Up => {
                        let above = segment.level - 1;
                        let large_dir = self.run_dir.join(self.trained_checkpoint(above));
                        let (_, large) = vcycle_transform::open_model(&large_dir, &self.arch)?;
                        let options = self.options(
                            segment.level,
                            Some(large.dims.heads),
                            Some(large.dims.layers),
                        );
                        let job = Job::grow(&trained_dir, &large_dir, self.config.alpha, &options)?;
                        self.warn(job.warnings());
                        job.write(&next_dir, false)?;
                        self.warn(&job.write_warnings());
                        if let Some(trained) = &trained_moments {
                            let large = self.moments_dir(&self.trained_checkpoint(above));
                            let job =
                                moments::grow_job(trained, &large, self.config.alpha, &options);
                            let next = self.moments_dir(&next_rel);
                            moments::map(trained, &next, job, |w| self.warn(w))?;
                        }
                        format!("grow (alpha = {})", self.config.alpha)
                    }
                };
                let next_level = segments
                    .get(segment.index)
                    .map_or(segment.level, |s| s.level);
                let next_model = M::load_hf(&next_dir, &self.device)?;
                let to = self.size(&next_dir, next_level, next_model.num_params())?;
                let after = self.valid_loss(&next_model, &valid)?;
                (
                    operator,
                    Some(next_model),
                    Some(to),
                    Some(after),
                    Some(next_rel),
                )
            };
            let record = BoundaryRecord {
                boundary: segment.index,
                segment: segment.name(),
                phase: segment.phase,
                operator,
                from,
                to,
                steps: state.steps,
                train_flops: state.train_flops,
                valid_loss_before,
                valid_loss_after,
                trained_checkpoint: trained_rel,
                next_checkpoint: next_rel,
                segment_seconds: seconds,
            };
            if !self.quiet {
                println!("{record}");
            }
            state.boundaries.push(record);
            state.completed_segments = segment.index;
            state = self.write_state(&state)?;
            model = match next {
                Some(next) => Some(next),
                None => Some(trained.train()),
            };
        }
        let model = match model {
            Some(m) => m,
            None => M::load_hf(&final_dir, &self.device)?,
        };
        Ok(VCycleOutcome {
            model,
            final_dir,
            boundaries: state.boundaries,
            steps: state.steps,
            train_flops: state.train_flops,
        })
    }

    fn warn(&self, warnings: &[String]) {
        if !self.quiet {
            for w in warnings {
                eprintln!("warning: {w}");
            }
        }
    }

    /// The moments directory of a checkpoint (relative to the run directory).
    fn moments_dir(&self, checkpoint: &Path) -> PathBuf {
        let name = checkpoint.file_name().unwrap_or_default();
        self.run_dir.join(MOMENTS_DIR).join(name)
    }

    /// The optimizer state segment `index` starts from: with carry, the moments mapped at the
    /// boundary before it (none before the first segment).
    fn carried_moments(&self, index: usize, model: &M) -> Result<Option<OptimizerRecord>> {
        if self.config.optimizer_state != OptimizerStatePolicy::Carry || index <= 1 {
            return Ok(None);
        }
        let dir = self.moments_dir(&self.start_checkpoint(index));
        Moments::load_record(&dir, model, &self.device).map(Some)
    }

    /// Runs one segment, its optimizer starting from `carried` if given; returns the trained
    /// model (valid mode), its training FLOPs and, with carry, the optimizer's final state.
    fn train_segment(
        &mut self,
        segment: &Segment,
        model: M,
        carried: Option<OptimizerRecord>,
        train: &TrainLoader<M>,
        valid: &ValidLoader<M>,
        training: &mut impl SegmentTraining<M>,
    ) -> Result<(M, f64, Option<OptimizerRecord>)> {
        let fail = |message: String| Error::Training {
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
        let learner = Learner::new(model, optimizer, (self.scheduler)(segment));
        let carry = self.config.optimizer_state == OptimizerStatePolicy::Carry;
        let last_state = LastRecord::default();
        let mut training = training.training(segment, loader, valid.clone());
        if carry {
            // `launch` gives back only the model; the checkpointer Burn calls after every epoch
            // hands over the optimizer state (the user's checkpointers are replaced).
            training = training
                .with_custom_checkpointers(Discard, last_state.clone(), Discard)
                .with_checkpointing_strategy(KeepLastNCheckpoints::new(1));
        }
        let result = training
            .num_epochs(segment.epoch_steps.len())
            .label(&segment.name())
            .launch(learner);
        if let Some(error) = result.error {
            return Err(fail(error.to_string()));
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
        let flops = flops.lock().map(|f| *f).unwrap_or(f64::NAN);
        let optimizer = last_state.take();
        if carry && optimizer.is_none() {
            return Err(fail("Burn checkpointed no optimizer state to carry".into()));
        }
        Ok((result.model, flops, optimizer))
    }
}

/// The driver's default optimizer: AdamW (Burn's defaults) with gradient-norm clipping at 1.0.
/// Public so a baseline without the V-cycle can train with exactly the same one.
pub fn default_optimizer() -> ModuleOptimizer {
    AdamWConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init()
}

fn pretty(value: &serde_json::Value, dir: &Path) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(json(dir.join(CONFIG_FILE)))
}

/// The name a leftover temporary of [`hf::write_dir_atomically`] or
/// [`hf::write_file_atomically`] stands for, and whether it is a replaced original moved aside:
/// `.NAME.tmp-PID` → (NAME, false), `.NAME.old-PID` → (NAME, true).
fn leftover_of(entry: &str) -> Option<(&str, bool)> {
    let (base, pid) = entry.strip_prefix('.')?.rsplit_once('-')?;
    pid.parse::<u32>().ok()?;
    match base.rsplit_once('.')? {
        (name, "tmp") => Some((name, false)),
        (name, "old") => Some((name, true)),
        _ => None,
    }
}

/// Cleans `dir` after a killed run. A directory of `keep` that is missing but was moved aside
/// by an interrupted replacement (`.NAME.old-PID`) is put back: the state named it, so it was
/// complete, and a replacement only starts after the state was written. Then every leftover
/// temporary goes, and with `only_keep` every other entry not in `keep` too.
fn clear_leftovers(dir: &Path, keep: &[PathBuf], only_keep: bool) -> Result<()> {
    let entries = |dir: &Path| -> Result<Vec<PathBuf>> {
        fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()).map_err(io(dir)))
            .collect()
    };
    for path in entries(dir)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some((original, true)) = name.as_deref().and_then(leftover_of) {
            let original = dir.join(original);
            if keep.contains(&original) && !original.exists() {
                fs::rename(&path, &original).map_err(io(&path))?;
            }
        }
    }
    for path in entries(dir)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let temporary = name.as_deref().and_then(leftover_of).is_some();
        if temporary || (only_keep && !keep.contains(&path)) {
            remove_path(&path)?;
        }
    }
    Ok(())
}

fn remove_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path).map_err(io(path))
    } else {
        fs::remove_file(path).map_err(io(path))
    }
}
