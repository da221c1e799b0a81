//! The V-cycle driver (docs/operator-contract.md §4): one `SupervisedTraining::launch` per segment, the transform
//! library at every boundary, a checkpoint directory and a state file after each, so a killed
//! run resumes from its last completed boundary.
//!
//! Segments of a k-level cycle: `down` at levels 1 … k − 1, `bottom` at level k, `up` at levels
//! k − 1 … 1. After a down segment the trained model is saved (θ_i) and coalesced to the next
//! level; after the bottom and every up segment but the last it is grown (de-coalesced to the
//! level above and interpolated with that level's θ_i, weight α).

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::Device;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, LearnerModel, TrainLoader, TrainStep, ValidLoader};
use vcycle_transform::{ArchChoice, Job, Options, SchemeSpec, Target};

use crate::config::{DecaySegments, LevelConfig, OptimizerStatePolicy, VCycleConfig};
use crate::error::{Error, Result, io, json};
use crate::flops::SequenceBatch;
use crate::hf::{self, HfModel};
use crate::moments::{self, Moments};
use crate::schedule::Decay;

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

mod record;
mod run_dir;
mod segment;
mod train;

use record::RunState;
pub use record::{BoundaryRecord, ModelSize, VCycleOutcome};
use run_dir::{clear_leftovers, pretty, remove_path};
pub use segment::{Phase, Segment, SegmentTraining};
pub use train::default_optimizer;

type OptimizerFactory = Box<dyn FnMut(&Segment) -> ModuleOptimizer>;
type SchedulerFactory = Box<dyn FnMut(&Segment) -> Result<ModuleLrScheduler>>;

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
            scheduler: Box::new(|s| s.schedule().scheduler()),
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

    /// Builds the learning-rate scheduler of each segment (stepped once per optimizer step)
    /// instead of the default, which follows [`Segment::schedule`].
    pub fn with_scheduler(
        mut self,
        mut f: impl FnMut(&Segment) -> ModuleLrScheduler + 'static,
    ) -> Self {
        self.scheduler = Box::new(move |segment| Ok(f(segment)));
        self
    }

    /// Whether to print the boundary log lines (default: yes).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The V-cycle configuration.
    pub fn config(&self) -> &VCycleConfig {
        &self.config
    }

    /// The run directory (checkpoints, state, boundary log).
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
                let decays = match c.decay_segments {
                    DecaySegments::Every => true,
                    DecaySegments::Last => index == count,
                };
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
                    decay: if decays { c.decay } else { Decay::Constant },
                    decay_floor: c.decay_floor,
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
            let boundary_started = Instant::now();
            hf::save_hf(&trained, &trained_dir)?;
            let mut boundary_seconds = boundary_started.elapsed().as_secs_f64();
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
            let boundary_started = Instant::now();
            let (operator, next, to, valid_loss_after, next_rel) = if last {
                hf::save_hf(&trained, &final_dir)?;
                boundary_seconds += boundary_started.elapsed().as_secs_f64();
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
                boundary_seconds += boundary_started.elapsed().as_secs_f64();
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
                boundary_seconds,
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
}
