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
use burn::train::{
    InferenceStep, LearnerModel, SupervisedTraining, TrainLoader, TrainStep, ValidLoader,
};
use sha2::{Digest, Sha256};
use vcycle_transform::{ArchChoice, Options, Target};

use crate::checkpoint::files::write_file_atomically;
use crate::checkpoint::moments::Moments;
use crate::checkpoint::resizable::Resizable;
use crate::cycle::config::{LevelConfig, OptimizerStatePolicy, VCycleConfig};
use crate::error::{Error, Result, io, json};

/// Counts the training FLOPs of one batch (forward and backward).
pub type FlopCounter<I> = Arc<dyn Fn(&I) -> f64 + Send + Sync>;

/// A model the driver can train: a Burn learner model whose checkpoints its rules describe
/// ([`Resizable`]) and that counts its training FLOPs. Its validation batches are `Clone`: the
/// rules proof evaluates two models on one batch.
pub trait VCycleModel: LearnerModel + Resizable + TrainStep + InferenceStep<Input: Clone> {
    /// Counts the training FLOPs of a batch at this model's size, for the boundary log and the
    /// run's totals. A model trained on token sequences returns
    /// [`sequence_flop_counter(self)`](crate::sequence_flop_counter).
    fn flop_counter(&self) -> Result<FlopCounter<<Self as TrainStep>::Input>>;
}

use super::record::RunState;
use super::record::{BoundaryRecord, ModelSize, VCycleOutcome};
use super::run_dir::{
    CHECKPOINTS_DIR, CONFIG_FILE, FINAL_DIR, LOG_FILE, MOMENTS_DIR, RunLock, STATE_FILE, checksums,
    clear_leftovers, pretty, remove_path, verify_checksums,
};
use super::segment::{self, Segment};
use super::train::default_optimizer;
use super::transition::INIT;
use super::transition::Operator;

type OptimizerFactory = Box<dyn FnMut(&Segment) -> ModuleOptimizer>;
type SchedulerFactory = Box<dyn FnMut(&Segment) -> Result<ModuleLrScheduler>>;

/// The V-cycle driver.
pub struct VCycle<M> {
    pub(super) config: VCycleConfig,
    pub(super) run_dir: PathBuf,
    pub(super) device: Device,
    pub(super) optimizer: OptimizerFactory,
    pub(super) scheduler: SchedulerFactory,
    pub(super) on_boundary: Box<dyn FnMut(&BoundaryRecord)>,
    /// The caller's options the run depends on, recorded and compared on resume.
    pub(super) run_options: serde_json::Value,
    /// The model's rules, as the transform library is given them: the model's own, read when
    /// `run` or `resume` is given the model.
    pub(super) arch: ArchChoice,
    pub(super) _model: PhantomData<fn() -> M>,
}

pub(super) const STATE_FORMAT: u32 = 3;

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
            on_boundary: Box::new(|_| {}),
            run_options: serde_json::Value::Null,
            arch: ArchChoice::Detect,
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

    /// Records options of the caller's that the run depends on (the data, the sequence length,
    /// the model's hyperparameters) with the run, as the configuration is: a resume with other
    /// values is refused instead of failing, or training something else, later.
    pub fn with_run_options(mut self, options: serde_json::Value) -> Self {
        self.run_options = options;
        self
    }

    /// Calls `report` with each boundary's record once it is saved (the record is also logged
    /// at `info` level through the `log` crate, and kept in `boundaries.json`).
    pub fn on_boundary(mut self, report: impl FnMut(&BoundaryRecord) + 'static) -> Self {
        self.on_boundary = Box::new(report);
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

    /// The segments of the run, in order.
    pub fn segments(&self) -> Vec<Segment> {
        segment::plan(&self.config, &self.run_dir)
    }

    /// Whether `run_dir` holds a run (a state file).
    pub fn has_run(&self) -> bool {
        self.run_dir.join(STATE_FILE).is_file()
    }

    /// Starts a new run from `model`, the full-size model (level 1; a path that starts at a
    /// smaller level coalesces it first). Refuses a run directory that already holds a run
    /// (see [`VCycle::resume`]) or that another training is using.
    ///
    /// `training` configures each segment's `SupervisedTraining`, which the driver creates
    /// over loaders sized to the segment's budget, with one epoch per validation pass, the
    /// segment's name as the label and, with carried moments, the driver's checkpointers: it
    /// adds metrics, a renderer, a device strategy. A setting it changes that breaks the
    /// budget is refused at the segment's boundary.
    pub fn run(
        &mut self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl FnMut(&Segment, SupervisedTraining<M>) -> SupervisedTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        let _lock = RunLock::take(&self.run_dir)?;
        self.bind(&model)?;
        if self.has_run() {
            return Err(Error::Resume {
                path: self.run_dir.clone(),
                message: "the directory already holds a run; resume it or choose another".into(),
            });
        }
        fs::create_dir_all(self.run_dir.join(CHECKPOINTS_DIR)).map_err(io(&self.run_dir))?;
        let config = self.config_json()?;
        write_file_atomically(
            &self.run_dir.join(CONFIG_FILE),
            pretty(&config, &self.run_dir)?.as_bytes(),
        )?;
        model.save_dir(&self.run_dir.join(INIT))?;
        if self.config.prove_rules {
            self.prove_rules(&model, &valid)?;
        }
        let mut files = checksums(&self.run_dir, Path::new(INIT))?;
        // A run that starts small coalesces the model it was given first.
        let start = self.start_checkpoint(1);
        let model = if start == Path::new(INIT) {
            Held::Current(model)
        } else {
            let level = self.segments()[0].level;
            self.coalesce(
                &self.run_dir.join(INIT),
                None,
                level,
                &self.run_dir.join(&start),
            )?;
            files.extend(checksums(&self.run_dir, &start)?);
            Held::Like(model)
        };
        let state = RunState {
            format: STATE_FORMAT,
            arch: self.arch_name(),
            rules: self.rules_digest(),
            config,
            completed_segments: 0,
            steps: 0,
            train_flops: 0.0,
            boundaries: Vec::new(),
            run_options: self.run_options.clone(),
            files,
        };
        let state = self.write_state(&state)?;
        self.drive(state, model, train, valid, training)
    }

    /// Continues the run in `run_dir` from its last completed boundary. `model` is built as
    /// for [`VCycle::run`]: its rules and hyperparameters are used, its weights are not. The
    /// configuration and the rules must be the ones the run started with, and the checkpoints
    /// it relies on the ones it wrote; another training using the directory is refused.
    pub fn resume(
        &mut self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl FnMut(&Segment, SupervisedTraining<M>) -> SupervisedTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        let _lock = RunLock::take(&self.run_dir)?;
        self.bind(&model)?;
        let mut state = self.read_state()?;
        // Remove what an interrupted segment or boundary left behind: the checkpoints of an
        // unfinished boundary and every temporary. The state names a directory only once it
        // is complete, so a named directory is never half-written.
        let keep: Vec<PathBuf> = (1..=state.completed_segments + 1)
            .map(|s| self.start_checkpoint(s))
            .chain(std::iter::once(PathBuf::from(INIT)))
            .chain((1..=state.completed_segments).map(|s| self.trained_checkpoint(s)))
            .map(|p| self.run_dir.join(p))
            .collect();
        clear_leftovers(&self.run_dir.join(CHECKPOINTS_DIR), &keep, true)?;
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
        let final_dir = finished.then(|| self.run_dir.join(FINAL_DIR));
        clear_leftovers(&self.run_dir, final_dir.as_slice(), false)?;
        // The files the resume relies on are the ones the state recorded (checked after the
        // sweep, which puts back a checkpoint a killed replacement had moved aside).
        let moments_keep: Vec<PathBuf> = keep
            .iter()
            .filter_map(|p| p.file_name())
            .map(|name| moments.join(name))
            .collect();
        let relied: Vec<&PathBuf> = keep.iter().chain(&moments_keep).chain(&final_dir).collect();
        state
            .files
            .retain(|rel, _| relied.iter().any(|r| self.run_dir.join(rel).starts_with(r)));
        verify_checksums(&self.run_dir, &state.files)?;
        // A kill between the log's and the state's writes leaves the log one record ahead.
        let state = self.write_state(&state)?;
        for segment in self.segments().iter().skip(state.completed_segments) {
            if segment.dir.exists() {
                remove_path(&segment.dir)?;
            }
        }
        self.drive(state, Held::Like(model), train, valid, training)
    }

    /// Resumes the run in `run_dir` if there is one, else starts one from `model`.
    pub fn run_or_resume(
        &mut self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        training: impl FnMut(&Segment, SupervisedTraining<M>) -> SupervisedTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        if self.has_run() {
            self.resume(model, train, valid, training)
        } else {
            self.run(model, train, valid, training)
        }
    }

    /// Takes the model's rules, the ones every transform of the run is given.
    fn bind(&mut self, model: &M) -> Result<()> {
        self.arch = ArchChoice::Rules(Box::new(model.layout()?.rules().clone()));
        Ok(())
    }

    fn config_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&self.config).map_err(json(self.run_dir.join(CONFIG_FILE)))
    }

    /// The state file, checked against the configuration.
    fn read_state(&self) -> Result<RunState> {
        let path = self.run_dir.join(STATE_FILE);
        let text = vcycle_transform::read_regular(&path)?;
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
        if state.rules != self.rules_digest() {
            return Err(resume_error(format!(
                "the rules of `{}` differ from the ones the run started with",
                state.arch
            )));
        }
        if state.config != self.config_json()? {
            return Err(resume_error(format!(
                "the V-cycle configuration differs from the run's ({})",
                self.run_dir.join(CONFIG_FILE).display()
            )));
        }
        if state.run_options != self.run_options {
            return Err(resume_error(format!(
                "the run started with the options {}, not {}",
                state.run_options, self.run_options
            )));
        }
        let segments = self.segments();
        if let Some(reason) = state.inconsistency(
            &segments,
            |s| self.trained_checkpoint(s),
            |s| self.start_checkpoint(s),
        ) {
            return Err(resume_error(format!(
                "{} does not describe a run of this configuration: {reason}",
                path.display()
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
        write_file_atomically(&log_path, (log + "\n").as_bytes())?;
        write_file_atomically(&state_path, (text.clone() + "\n").as_bytes())?;
        serde_json::from_str(&text).map_err(json(&state_path))
    }

    /// The checkpoint a segment starts from, relative to the run directory.
    fn start_checkpoint(&self, segment: usize) -> PathBuf {
        let name = if segment <= 1 {
            match self.segments().first().map_or(1, |s| s.level) {
                1 => return PathBuf::from(INIT),
                level => format!("00-init-L{level}"),
            }
        } else {
            let level = self
                .segments()
                .get(segment - 1)
                .map_or(1, |s: &Segment| s.level);
            format!("{:02}-to-L{level}", segment - 1)
        };
        Path::new(CHECKPOINTS_DIR).join(name)
    }

    /// The checkpoint of the model a segment trained, relative to the run directory.
    pub(super) fn trained_checkpoint(&self, segment: usize) -> PathBuf {
        let name = self
            .segments()
            .get(segment.saturating_sub(1))
            .map_or_else(|| format!("{segment:02}"), Segment::name);
        Path::new(CHECKPOINTS_DIR).join(name)
    }

    fn level(&self, level: usize) -> &LevelConfig {
        &self.config.levels[level - 1]
    }

    /// The name of the model's rules (`gpt2`, a rule file's `name`), recorded in the state.
    /// The SHA-256 of the rules as parsed (where they were read from left out).
    fn rules_digest(&self) -> String {
        let text = match &self.arch {
            ArchChoice::Rules(rules) => format!(
                "{:?}",
                vcycle_transform::Rules {
                    source: None,
                    ..(**rules).clone()
                }
            ),
            other => format!("{other:?}"),
        };
        format!("{:x}", Sha256::digest(text.as_bytes()))
    }

    pub(super) fn arch_name(&self) -> String {
        match &self.arch {
            ArchChoice::Rules(rules) => rules.name.clone(),
            ArchChoice::Preset(name) => name.clone(),
            ArchChoice::Detect => String::new(),
        }
    }

    /// Transform options for moving between `level` and the level above it, with `level`'s
    /// schemes.
    pub(super) fn options(
        &self,
        level: usize,
        heads: Option<usize>,
        layers: Option<usize>,
    ) -> Result<Options> {
        let lc = self.level(level);
        Ok(Options {
            arch: self.arch.clone(),
            target: Target {
                heads,
                kv_heads: None,
                layers,
                width_scheme: lc.width_scheme.clone(),
                depth_scheme: lc.depth_scheme.clone(),
                embedding_rule: self.config.embedding_rule,
                depth_init: self.config.depth_init,
            },
            shard_size: None,
        })
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
        mut model: Held<M>,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
        mut training: impl FnMut(&Segment, SupervisedTraining<M>) -> SupervisedTraining<M>,
    ) -> Result<VCycleOutcome<M>> {
        let segments = self.segments();
        let final_dir = self.run_dir.join(FINAL_DIR);
        if state.completed_segments >= segments.len() {
            let model = model.into_model(&final_dir, &self.device)?;
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
            let current = model.into_model(&start_dir, &self.device)?;
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
            trained.save_dir(&trained_dir)?;
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
                trained.save_dir(&final_dir)?;
                boundary_seconds += boundary_started.elapsed().as_secs_f64();
                (Operator::End, None, None, None, None)
            } else {
                let next_rel = self.start_checkpoint(segment.index + 1);
                let next_dir = self.run_dir.join(&next_rel);
                let next_level = segments[segment.index].level;
                let operator = if next_level > segment.level {
                    self.coalesce(
                        &trained_dir,
                        trained_moments.as_deref(),
                        next_level,
                        &next_dir,
                    )?
                } else {
                    self.grow(
                        segment.index,
                        &trained_dir,
                        trained_moments.as_deref(),
                        &next_dir,
                    )?
                };
                let next_model = trained.load_dir(&next_dir, &self.device)?;
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
                trained_checkpoint: trained_rel.clone(),
                next_checkpoint: next_rel,
                segment_seconds: seconds,
                boundary_seconds,
            };
            log::info!("{record}");
            let final_rel = PathBuf::from(FINAL_DIR);
            let written = [
                Some(&trained_rel),
                record.next_checkpoint.as_ref(),
                last.then_some(&final_rel),
            ];
            for rel in written.into_iter().flatten() {
                state.files.extend(checksums(&self.run_dir, rel)?);
                let moments = self.moments_dir(rel);
                if moments.is_dir() {
                    let rel = moments.strip_prefix(&self.run_dir).unwrap_or(&moments);
                    state.files.extend(checksums(&self.run_dir, rel)?);
                }
            }
            state.boundaries.push(record);
            state.completed_segments = segment.index;
            state = self.write_state(&state)?;
            if let Some(record) = state.boundaries.last() {
                (self.on_boundary)(record);
            }
            model = Held::Current(next.unwrap_or_else(|| trained.train()));
        }
        let model = model.into_model(&final_dir, &self.device)?;
        Ok(VCycleOutcome {
            model,
            final_dir,
            boundaries: state.boundaries,
            steps: state.steps,
            train_flops: state.train_flops,
        })
    }

    pub(super) fn warn(&self, warnings: &[String]) {
        for w in warnings {
            log::warn!("{w}");
        }
    }

    /// The moments directory of a checkpoint (relative to the run directory).
    pub(super) fn moments_dir(&self, checkpoint: &Path) -> PathBuf {
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

/// The model the driver holds between segments: the one the next segment trains, or one whose
/// rules and hyperparameters load it from its checkpoint (a resume, a path that starts small).
enum Held<M> {
    Current(M),
    Like(M),
}

impl<M: Resizable> Held<M> {
    fn into_model(self, dir: &Path, device: &Device) -> Result<M> {
        match self {
            Held::Current(model) => Ok(model),
            Held::Like(like) => like.load_dir(dir, device),
        }
    }
}
