//! The plugin's one error type. Every variant names the file, segment or setting it is about,
//! and keeps the error it wraps as its `source()` (not repeated in its own message, so a chain
//! printed with `{:#}` says each cause once).

use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong in the plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation failed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file could not be read or written.
    #[error("{path}: JSON")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// The transform library refused or failed a conversion.
    #[error(transparent)]
    Transform(#[from] vcycle_transform::Error),
    /// burn-store could not write or read a safetensors file.
    #[error("{path}: safetensors")]
    Store {
        /// The safetensors file.
        path: PathBuf,
        /// What burn-store said.
        #[source]
        source: burn::store::SafetensorsStoreError,
    },
    /// A name pattern (a model's rename, or the exact name of a tensor) is not a usable regular
    /// expression.
    #[error("architecture `{arch}`: name pattern `{pattern}`")]
    Pattern {
        /// The rules' architecture name.
        arch: String,
        /// The pattern.
        pattern: String,
        /// Why the regex crate refused it.
        #[source]
        source: regex::Error,
    },
    /// A checkpoint's tensors do not fit the model built from its config.json.
    #[error("{path}: {message}")]
    Mismatch {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// Which tensor does not fit, and how.
        message: String,
    },
    /// A model's tensors and its rule file disagree: a tensor no rule names, or a layout the
    /// rules cannot express.
    #[error("architecture `{arch}`: tensor `{tensor}`: {message}")]
    Layout {
        /// The rules' architecture name.
        arch: String,
        /// The tensor's name.
        tensor: String,
        /// What does not fit.
        message: String,
    },
    /// Growing a width-coalesced fresh model back with α = 1 changed what it computes, which
    /// exact width growth never does: an axis of the rules has the wrong direction (`in` for
    /// `out` or back), or the model is not invariant to duplicated units.
    #[error(
        "architecture `{arch}`: the rules do not preserve the model's function: the fresh model \
         coalesced in width to level {level} has a validation loss of {small:.6}, grown back to \
         level {to} with alpha = 1 {grown:.6}; check each axis's `in`/`out` direction (a \
         projection's input is `in`, its output `out`), or set `prove_rules` to false for a \
         model whose function duplicated units change"
    )]
    RulesProof {
        /// The rules' architecture name.
        arch: String,
        /// The coalesced level.
        level: usize,
        /// The level it was grown back to.
        to: usize,
        /// Validation loss of the coalesced model.
        small: f64,
        /// Validation loss of the model grown back.
        grown: f64,
    },
    /// A rule file cannot drive a model's checkpoints.
    #[error("architecture `{arch}`: {message}")]
    Rules {
        /// The rules' architecture name.
        arch: String,
        /// What the rules lack.
        message: String,
    },
    /// A model was asked for a size its [`crate::Sizes`] do not hold.
    #[error("sizes: {0}")]
    Sizes(String),
    /// A config.json lacks a value the model needs, or holds one it cannot use.
    #[error("{path}: config.json: {message}")]
    ModelConfig {
        /// The checkpoint directory.
        path: PathBuf,
        /// The key and what is wrong with it.
        message: String,
    },
    /// A device name cannot be used in this build or on this machine.
    #[error("device `{name}`: {message}")]
    Device {
        /// The name as given (e.g. `wgpu:1`).
        name: String,
        /// Why it cannot be used.
        message: String,
    },
    /// The V-cycle configuration is not usable.
    #[error("V-cycle configuration: {0}")]
    VCycleConfig(String),
    /// A bundled model's configuration is not usable (heads that do not divide the width, …).
    #[error("{model} configuration: {message}")]
    Model {
        /// The model (`GPT-2`, `BERT`, `Llama`, `ViT`).
        model: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A learning-rate schedule is not usable.
    #[error("learning-rate schedule: {0}")]
    Schedule(String),
    /// The data given to the driver cannot be used.
    #[error("data: {0}")]
    Data(String),
    /// The run directory holds a run that cannot be resumed with this configuration.
    #[error("{path}: cannot resume: {message}")]
    Resume {
        /// The run directory.
        path: PathBuf,
        /// What differs from the configuration.
        message: String,
    },
    /// A run directory that cannot be used now: another training holds it, or it cannot be
    /// locked.
    #[error("run directory {path}: {message}")]
    RunDirectory {
        /// The run directory.
        path: PathBuf,
        /// Why, naming the holder.
        message: String,
    },
    /// An optimizer state could not be read, written or carried across a boundary.
    #[error("{what}: optimizer state: {message}")]
    Optimizer {
        /// The state's file, directory or parameter.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// Burn took another number of optimizer steps than the segment's budget: one optimizer
    /// step takes another number of batches than the configuration's `batches_per_step`.
    #[error(
        "segment {segment} ({name}): Burn took {taken} optimizer steps over {batches} batches, \
         not the {planned} that batches_per_step = {batches_per_step} plans: batches_per_step \
         must be the batches one optimizer step takes (gradient accumulation × devices)"
    )]
    BatchesPerStep {
        /// The segment's 1-based position in the run.
        segment: usize,
        /// The segment's name, e.g. `02-bottom-L2`.
        name: String,
        /// The batches the segment trained on.
        batches: usize,
        /// The configuration's batches per optimizer step.
        batches_per_step: usize,
        /// The optimizer steps the budget gives the segment.
        planned: usize,
        /// The optimizer steps Burn took.
        taken: usize,
    },
    /// Burn's training of a segment ended with an error.
    #[error("segment {segment} ({name}): training failed")]
    Training {
        /// The segment's 1-based position in the run.
        segment: usize,
        /// The segment's name, e.g. `02-bottom-L2`.
        name: String,
        /// What Burn reported.
        #[source]
        source: Arc<burn::train::TrainingError>,
    },
    /// A segment did not train as planned: it was interrupted, saw another number of batches,
    /// or left no optimizer state to carry.
    #[error("segment {segment} ({name}): {message}")]
    Segment {
        /// The segment's 1-based position in the run.
        segment: usize,
        /// The segment's name, e.g. `02-bottom-L2`.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A validation batch could not be loaded or measured.
    #[error("validation")]
    Validation {
        /// What Burn reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The plugin's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with its path.
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

/// Wraps a JSON error with its path.
pub(crate) fn json(path: impl Into<PathBuf>) -> impl FnOnce(serde_json::Error) -> Error {
    let path = path.into();
    move |source| Error::Json { path, source }
}
