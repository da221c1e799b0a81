//! Ready-to-run conversions: open and analyse the inputs, plan, then write. The CLI and the
//! Burn plugin both go through [`Job`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::anatomy::{
    Anatomy, ArchChoice, META_ARCH, META_HEAD_DIM, META_HEADS, META_KV_HEADS, META_TIED,
};
use crate::dtype::NonFinite;
use crate::error::{Error, Result};
use crate::execute::{self, Inputs};
use crate::plan::{self, AlphaRange, Plan, Target, TensorPlan};
use crate::progress::Progress;
use crate::read::{Checkpoint, Layout, Prefetch};
use crate::write::{self, OutputForm, OutputPolicy, SideFile};

/// Options shared by every conversion.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The architecture: detected, a preset, or a rule file.
    pub arch: ArchChoice,
    /// The other model's sizes and the schemes, rules and initialisation that map to it.
    pub target: Target,
    /// Maximum bytes per output shard. None: the input's form (sharded inputs keep the size of
    /// their largest shard).
    pub shard_size: Option<u64>,
}

/// A validated conversion: inputs opened and analysed, plan built, output form decided.
pub struct Job {
    plan: Plan,
    primary: Checkpoint,
    large: Option<Checkpoint>,
    /// A rule file read, besides the checkpoints.
    rules_file: Option<PathBuf>,
    form: OutputForm,
    metadata: BTreeMap<String, String>,
    warnings: Vec<String>,
    /// Refuse non-finite inputs and outputs instead of warning.
    strict: bool,
    /// Warnings found while writing: inputs holding NaN or infinite values, outputs that
    /// overflow their dtype.
    write_warnings: Mutex<Vec<String>>,
}

/// How many bytes of the scanned inputs of one output tensor stay mapped until it is computed:
/// about a CPU's last-level cache, beyond which scanned bytes would not be found there anyway.
const KEEP_SCANNED_BYTES: usize = 32 << 20;

/// An input tensor: (in the large checkpoint, name).
type InputKey<'a> = (bool, &'a str);

/// The inputs writing has scanned for NaN and infinite values so far.
#[derive(Default)]
struct Scanned {
    done: BTreeSet<(bool, String)>,
    non_finite: BTreeSet<(bool, String)>,
}

/// Opens a checkpoint and claims every tensor (an unclaimed tensor is an error).
pub fn open_model(path: &Path, arch: &ArchChoice) -> Result<(Checkpoint, Anatomy)> {
    let checkpoint = Checkpoint::open(path)?;
    let anatomy = Anatomy::analyze(&checkpoint, arch)?;
    anatomy.require_complete(&checkpoint)?;
    Ok((checkpoint, anatomy))
}

impl Job {
    /// Large → small.
    pub fn coalesce(input: &Path, options: &Options) -> Result<Job> {
        let (checkpoint, anatomy) = open_model(input, &options.arch)?;
        let plan = plan::plan_resize(&checkpoint, &anatomy, &options.target, true)?;
        Job::resized(plan, checkpoint, None, &anatomy, options)
    }

    /// Small → large.
    pub fn decoalesce(input: &Path, options: &Options) -> Result<Job> {
        let (checkpoint, anatomy) = open_model(input, &options.arch)?;
        let plan = plan::plan_resize(&checkpoint, &anatomy, &options.target, false)?;
        Job::resized(plan, checkpoint, None, &anatomy, options)
    }

    /// De-coalesce `small` to the saved `large` model's sizes and interpolate with it; α must
    /// lie in [0, 1].
    pub fn grow(small: &Path, large: &Path, alpha: f64, options: &Options) -> Result<Job> {
        Job::grow_in(small, large, alpha, AlphaRange::Interpolate, options)
    }

    /// [`Job::grow`] with α checked against `range`.
    pub fn grow_in(
        small: &Path,
        large: &Path,
        alpha: f64,
        range: AlphaRange,
        options: &Options,
    ) -> Result<Job> {
        plan::check_alpha_in(alpha, range)?;
        let (small_ckpt, small_anatomy) = open_model(small, &options.arch)?;
        let (large_ckpt, large_anatomy) = open_model(large, &options.arch)?;
        let plan = plan::plan_grow(
            &small_ckpt,
            &small_anatomy,
            &large_ckpt,
            &large_anatomy,
            &options.target,
            alpha,
            range,
        )?;
        Job::resized(plan, small_ckpt, Some(large_ckpt), &small_anatomy, options)
    }

    /// (1 − α)·large + α·other; α must lie in [0, 1].
    pub fn interpolate(large: &Path, other: &Path, alpha: f64, options: &Options) -> Result<Job> {
        Job::interpolate_in(large, other, alpha, AlphaRange::Interpolate, options)
    }

    /// [`Job::interpolate`] with α checked against `range`.
    pub fn interpolate_in(
        large: &Path,
        other: &Path,
        alpha: f64,
        range: AlphaRange,
        options: &Options,
    ) -> Result<Job> {
        plan::check_alpha_in(alpha, range)?;
        let large_ckpt = Checkpoint::open(large)?;
        let other_ckpt = Checkpoint::open(other)?;
        let plan = plan::plan_interpolate(&large_ckpt, &other_ckpt, alpha, range)?;
        let form = output_form(
            &large_ckpt,
            large_ckpt.config().cloned(),
            options.shard_size,
        )?;
        let mut metadata = large_ckpt.metadata().clone();
        metadata
            .entry("format".into())
            .or_insert_with(|| "pt".into());
        Ok(Job::new(
            plan,
            other_ckpt,
            Some(large_ckpt),
            form,
            metadata,
            Vec::new(),
        ))
    }

    fn new(
        plan: Plan,
        primary: Checkpoint,
        large: Option<Checkpoint>,
        form: OutputForm,
        metadata: BTreeMap<String, String>,
        warnings: Vec<String>,
    ) -> Job {
        Job {
            plan,
            primary,
            large,
            rules_file: None,
            form,
            metadata,
            warnings,
            strict: false,
            write_warnings: Mutex::new(Vec::new()),
        }
    }

    /// Strict mode: [`Job::write`] refuses an input tensor holding NaN or infinite values and
    /// an output tensor that overflows its dtype (instead of warning).
    pub fn strict(mut self, strict: bool) -> Job {
        self.strict = strict;
        self
    }

    fn resized(
        plan: Plan,
        primary: Checkpoint,
        large: Option<Checkpoint>,
        anatomy: &Anatomy,
        options: &Options,
    ) -> Result<Job> {
        let to = plan.to.clone().unwrap_or_else(|| anatomy.dims.clone());
        let config = primary
            .config()
            .map(|c| crate::config::rewrite(c, &anatomy.rules.config, &to));
        let form = output_form(&primary, config, options.shard_size)?;
        let mut metadata = primary.metadata().clone();
        metadata
            .entry("format".into())
            .or_insert_with(|| "pt".into());
        metadata.insert(META_ARCH.into(), anatomy.rules.name.clone());
        metadata.insert(META_HEADS.into(), to.heads.to_string());
        metadata.insert(META_KV_HEADS.into(), to.kv_heads.to_string());
        metadata.insert(META_HEAD_DIM.into(), to.head_dim.to_string());
        metadata.insert(META_TIED.into(), to.tied.to_string());
        let mut warnings = Vec::new();
        if plan.unequal_groups {
            warnings.push(
                "groups of unequal size: norm statistics change, so the result is not function preserving"
                    .to_string(),
            );
        }
        let mut job = Job::new(plan, primary, large, form, metadata, warnings);
        job.rules_file = anatomy.rules.source.clone();
        Ok(job)
    }

    /// The plan the job will execute.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Things the user should know that do not stop the conversion, known from the plan.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Things found while writing that did not stop it: input tensors holding NaN or infinite
    /// values, output tensors whose finite inputs overflowed the output dtype (empty in strict
    /// mode, where they are errors). Inputs are scanned as they are first read, so a dry run
    /// finds none. Sorted: small tensors are computed several at a time, so the order they
    /// were found in varies from run to run.
    pub fn write_warnings(&self) -> Vec<String> {
        let mut warnings = self
            .write_warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        warnings.sort();
        warnings
    }

    /// Every path the job reads: the checkpoints' directories and files (extra files
    /// included) and the rule file. Outputs may be none of them, nor inside or around one.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.primary.paths_read();
        if let Some(large) = &self.large {
            paths.extend(large.paths_read());
        }
        paths.extend(self.rules_file.clone());
        paths
    }

    /// The policy every path the job writes follows.
    pub fn output_policy(&self, force: bool) -> Result<OutputPolicy> {
        let paths = self.input_paths();
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        OutputPolicy::new(&paths, force)
    }

    /// Checks the output path, then writes the output atomically.
    pub fn write(&self, output: &Path, force: bool) -> Result<()> {
        self.write_with_progress(output, force, &[], &())
    }

    /// Writes side files alone (a dry run's plan), under the output policy.
    pub fn write_side_files(&self, side_files: &[SideFile<'_>], force: bool) -> Result<()> {
        write::write_side_files(&self.output_policy(force)?, side_files)
    }

    /// [`Job::write`] with side files written beside the output (all or none appear),
    /// reporting the bytes written to `progress` as they are written.
    pub fn write_with_progress(
        &self,
        output: &Path,
        force: bool,
        side_files: &[SideFile<'_>],
        progress: &dyn Progress,
    ) -> Result<()> {
        let policy = self.output_policy(force)?;
        policy.check(&[output])?;
        let plan = &self.plan;
        let scanned = Mutex::new(Scanned::default());
        // Inputs no output reads are scanned now; the others with the first output computed
        // from them: before it (its computation then finds their bytes in the CPU cache if
        // they fit; reading them twice from memory cost a tenth of a coalesce's time), or,
        // where their NaN would show in it, only if it holds one.
        let read: BTreeSet<InputKey<'_>> = plan.tensors.iter().flat_map(input_keys).collect();
        for in_large in [false, true] {
            for name in self.input(in_large).iter().flat_map(|c| c.tensors().keys()) {
                if !read.contains(&(in_large, name.as_str())) {
                    self.scan_input((in_large, name), &scanned, &mut 0)?;
                }
            }
        }
        progress.start(plan.output_bytes());
        let order: Vec<_> = write::computation_order(&self.form, &plan.tensors)
            .into_iter()
            .map(|t| {
                let inputs = input_keys(t)
                    .filter_map(|(in_large, name)| Some((self.input(in_large)?, name)))
                    .collect();
                (t.name.as_str(), inputs)
            })
            .collect();
        let prefetch = Prefetch::new(&order);
        std::thread::scope(|scope| {
            scope.spawn(|| prefetch.run());
            // Ends the reading ahead however the computation ends, a panic included.
            let _finish = prefetch.finish_on_drop();
            self.write_computed(output, &policy, side_files, progress, &scanned, &prefetch)
        })
    }

    /// Computes and writes every output tensor; see [`Job::write_with_progress`].
    fn write_computed(
        &self,
        output: &Path,
        policy: &OutputPolicy,
        side_files: &[SideFile<'_>],
        progress: &dyn Progress,
        scanned: &Mutex<Scanned>,
        prefetch: &Prefetch<'_>,
    ) -> Result<()> {
        let plan = &self.plan;
        let executor = execute::Executor::new(plan);
        let inputs = Inputs {
            primary: &self.primary,
            large: self.large.as_ref(),
        };
        write::write_output(
            output,
            policy,
            &self.form,
            &plan.tensors,
            &self.metadata,
            side_files,
            &|t, sink| {
                prefetch.reached(&t.name);
                let from_inputs = || {
                    let scanned = scanned.lock().unwrap_or_else(PoisonError::into_inner);
                    input_keys(t).any(|(in_large, name)| {
                        scanned.non_finite.contains(&(in_large, name.to_string()))
                    })
                };
                let output_first = self.non_finite_inputs_reach_output(t);
                if !output_first {
                    let mut keep = KEEP_SCANNED_BYTES;
                    for key in input_keys(t) {
                        self.scan_input(key, scanned, &mut keep)?;
                    }
                }
                // Non-finite values that come from the inputs are reported with them.
                let check_output = output_first || (!from_inputs() && self.may_overflow(t));
                let size = crate::dtype::element_size(t.dtype);
                let mut elements = 0;
                let mut found: Option<NonFinite> = None;
                executor.stream(t, inputs, &mut |block| {
                    let bytes = block.bytes();
                    if check_output
                        && !block.known_finite()
                        && let Some(more) = crate::dtype::non_finite(t.dtype, bytes)
                    {
                        let f = found.get_or_insert(NonFinite {
                            first: elements + more.first,
                            ..NonFinite::default()
                        });
                        f.nan += more.nan;
                        f.inf += more.inf;
                    }
                    let len = bytes.len();
                    elements += len / size.max(1);
                    sink(block)?;
                    progress.advance(len as u64);
                    Ok(())
                })?;
                let Some(found) = found else {
                    return Ok(());
                };
                if output_first {
                    for key in input_keys(t) {
                        self.scan_input(key, scanned, &mut 0)?;
                    }
                }
                if from_inputs() {
                    return Ok(());
                }
                let count = found.nan + found.inf;
                if self.strict {
                    return Err(Error::NonFiniteOutput {
                        tensor: t.name.clone(),
                        dtype: t.dtype,
                        count,
                        first: found.first,
                    });
                }
                self.write_warnings
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(format!(
                        "output tensor `{}` holds {count} NaN or infinite values its finite inputs overflowed to ({:?}, first at element {})",
                        t.name, t.dtype, found.first
                    ));
                Ok(())
            },
        )
    }

    /// Whether finite inputs can give output `t` values beyond its dtype's range: see
    /// [`Plan::may_overflow`]; also when an input's dtype is not the output's (an f32 value
    /// beyond f16's range).
    fn may_overflow(&self, t: &TensorPlan) -> bool {
        self.plan.may_overflow(t)
            || input_keys(t).any(|(in_large, name)| {
                self.input(in_large)
                    .and_then(|c| c.info(name))
                    .is_none_or(|info| info.dtype != t.dtype)
            })
    }

    /// Whether every input value of output `t` passes through arithmetic into it, so that a
    /// NaN or infinite input shows in the output: then the output is scanned as it streams
    /// and its inputs only when it holds one (to name them). A coalesced output is several
    /// times smaller than its inputs, which are merged whole (schemes are partitions), so
    /// this saves most of the scan's reading; other operators scan the inputs first.
    fn non_finite_inputs_reach_output(&self, t: &TensorPlan) -> bool {
        self.plan.operator == plan::Operator::Coalesce && t.interpolate_with.is_none()
    }

    /// The primary checkpoint, or the saved large one.
    fn input(&self, in_large: bool) -> Option<&Checkpoint> {
        if in_large {
            self.large.as_ref()
        } else {
            Some(&self.primary)
        }
    }

    /// Scans input tensor `key` for NaN and infinite values unless it was scanned already:
    /// refused in strict mode, a warning otherwise.
    /// Its pages stay mapped for the computation if it fits in `keep` bytes (then counted
    /// off), and are released otherwise, so that memory stays flat.
    fn scan_input(
        &self,
        (in_large, name): InputKey<'_>,
        scanned: &Mutex<Scanned>,
        keep: &mut usize,
    ) -> Result<()> {
        let Some(checkpoint) = self.input(in_large) else {
            return Ok(());
        };
        // A poisoned lock means another thread panicked, which fails the conversion anyway;
        // the set itself is still whole, so the scan goes on rather than being skipped.
        let mut scanned = scanned.lock().unwrap_or_else(PoisonError::into_inner);
        if !scanned.done.insert((in_large, name.to_string())) {
            return Ok(());
        }
        let (Some(info), Some(bytes)) = (checkpoint.info(name), checkpoint.bytes(name)) else {
            return Ok(());
        };
        let found = crate::dtype::non_finite(info.dtype, bytes);
        match keep.checked_sub(bytes.len()) {
            Some(left) => *keep = left,
            None => checkpoint.release_all(name),
        }
        let Some(found) = found else {
            return Ok(());
        };
        scanned.non_finite.insert((in_large, name.to_string()));
        let path = checkpoint.file_of(name).unwrap_or(checkpoint.path());
        if self.strict {
            return Err(Error::NonFiniteInput {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                nan: found.nan,
                inf: found.inf,
                first: found.first,
            });
        }
        {
            let mut warnings = self
                .write_warnings
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            warnings.push(format!(
                "{}: tensor `{name}` holds {} NaN and {} infinite values (first at element {}); they pass into the output (strict mode refuses them)",
                path.display(),
                found.nan,
                found.inf,
                found.first
            ));
        }
        Ok(())
    }
}

/// The input tensors an output tensor is computed from.
fn input_keys(t: &TensorPlan) -> impl Iterator<Item = InputKey<'_>> {
    t.sources
        .iter()
        .map(|s| (false, s.as_str()))
        .chain(t.interpolate_with.iter().map(|w| (true, w.as_str())))
}

/// The output has the input's form; `--shard-size` needs a directory (a file cannot hold
/// shards and their index), so on a file it is refused rather than ignored.
fn output_form(
    checkpoint: &Checkpoint,
    config: Option<serde_json::Value>,
    shard_size: Option<u64>,
) -> Result<OutputForm> {
    Ok(match checkpoint.layout() {
        Layout::File if shard_size.is_some() => {
            return Err(Error::InvalidCheckpoint {
                path: checkpoint.path().to_path_buf(),
                reason: "sharding needs a model directory: this input is a single .safetensors file, and so would be the output".into(),
            });
        }
        Layout::File => OutputForm::File,
        Layout::Directory {
            sharded,
            extra_files,
            ..
        } => OutputForm::Directory {
            config,
            extra_files: extra_files
                .iter()
                .map(|name| (checkpoint.path().join(name), PathBuf::from(name)))
                .collect(),
            shard_size: shard_size.or_else(|| {
                sharded.then(|| checkpoint.file_data_bytes().into_iter().max().unwrap_or(0))
            }),
        },
    })
}

#[cfg(test)]
mod hand_checked_tests;
#[cfg(test)]
mod non_finite_tests;
#[cfg(test)]
mod round_trip_tests;
