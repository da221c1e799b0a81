//! Ready-to-run conversions: open and analyse the inputs, plan, then write. The CLI and the
//! Burn plugin both go through [`Job`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::anatomy::{
    Anatomy, ArchChoice, META_ARCH, META_HEAD_DIM, META_HEADS, META_KV_HEADS, META_TIED,
};
use crate::error::Result;
use crate::execute::{self, Inputs};
use crate::plan::{self, Plan, Target};
use crate::read::{Checkpoint, Layout};
use crate::write::{self, OutputForm};

/// Options shared by every conversion.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub arch: ArchChoice,
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
    form: OutputForm,
    metadata: BTreeMap<String, String>,
    warnings: Vec<String>,
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

    /// De-coalesce `small` to the saved `large` model's sizes and interpolate with it.
    pub fn grow(small: &Path, large: &Path, alpha: f64, options: &Options) -> Result<Job> {
        plan::check_alpha(alpha)?;
        let (small_ckpt, small_anatomy) = open_model(small, &options.arch)?;
        let (large_ckpt, large_anatomy) = open_model(large, &options.arch)?;
        let plan = plan::plan_grow(
            &small_ckpt,
            &small_anatomy,
            &large_ckpt,
            &large_anatomy,
            &options.target,
            alpha,
        )?;
        Job::resized(plan, small_ckpt, Some(large_ckpt), &small_anatomy, options)
    }

    /// (1 − α)·large + α·other.
    pub fn interpolate(large: &Path, other: &Path, alpha: f64, options: &Options) -> Result<Job> {
        plan::check_alpha(alpha)?;
        let large_ckpt = Checkpoint::open(large)?;
        let other_ckpt = Checkpoint::open(other)?;
        let plan = plan::plan_interpolate(&large_ckpt, &other_ckpt, alpha)?;
        let form = output_form(
            &large_ckpt,
            large_ckpt.config().cloned(),
            options.shard_size,
        );
        let mut metadata = large_ckpt.metadata().clone();
        metadata
            .entry("format".into())
            .or_insert_with(|| "pt".into());
        Ok(Job {
            plan,
            primary: other_ckpt,
            large: Some(large_ckpt),
            form,
            metadata,
            warnings: Vec::new(),
        })
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
        let form = output_form(&primary, config, options.shard_size);
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
        Ok(Job {
            plan,
            primary,
            large,
            form,
            metadata,
            warnings,
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Things the user should know that do not stop the conversion.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The input paths (for output-path checks).
    pub fn input_paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.primary.path()];
        if let Some(large) = &self.large {
            paths.push(large.path());
        }
        paths
    }

    /// Checks the output path, then writes the output atomically.
    pub fn write(&self, output: &Path, force: bool) -> Result<()> {
        write::check_output_path(&self.input_paths(), output, force)?;
        let inputs = Inputs {
            primary: &self.primary,
            large: self.large.as_ref(),
        };
        let plan = &self.plan;
        write::write_output(
            output,
            &self.form,
            &plan.tensors,
            &self.metadata,
            force,
            &|t| execute::compute(plan, t, inputs),
        )
    }
}

fn output_form(
    checkpoint: &Checkpoint,
    config: Option<serde_json::Value>,
    shard_size: Option<u64>,
) -> OutputForm {
    match checkpoint.layout() {
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
    }
}

#[cfg(test)]
mod hand_checked_tests;
#[cfg(test)]
mod round_trip_tests;
