//! The one error type of the transform library.

use std::path::PathBuf;

use safetensors::Dtype;

/// Everything that can go wrong while reading, planning, transforming or writing a checkpoint.
///
/// Variants carry the file, tensor, axis and shape they are about, so a message can say
/// exactly what is wrong without the caller adding context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file whose bytes are not a well-formed safetensors file; `reason` names the tensor
    /// and the offending field where there is one.
    #[error("{path}: not a valid safetensors file: {reason}")]
    InvalidSafetensors { path: PathBuf, reason: String },

    #[error("{path}: invalid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {reason}")]
    InvalidCheckpoint { path: PathBuf, reason: String },

    #[error("{path}: tensor `{tensor}` appears in more than one file")]
    DuplicateTensor { path: PathBuf, tensor: String },

    #[error("rule file {file}: {message}")]
    RuleFile { file: String, message: String },

    #[error("{path}: tensor `{tensor}` is not claimed by any rule of architecture `{arch}`")]
    UnclaimedTensor {
        path: PathBuf,
        tensor: String,
        arch: String,
    },

    #[error("{path}: required tensor `{tensor}` of architecture `{arch}` is missing")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        arch: String,
    },

    #[error(
        "{path}: tensor `{tensor}` has shape {shape:?}, but rule `{rule}` declares {rank} axes"
    )]
    RankMismatch {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        rule: String,
        rank: usize,
    },

    #[error(
        "tensor `{tensor}` axis {axis} has size {found} (shape {shape:?}), but space `{space}` has size {expected}{origin}"
    )]
    SpaceSizeMismatch {
        tensor: String,
        axis: usize,
        shape: Vec<usize>,
        space: String,
        expected: usize,
        found: usize,
        origin: String,
    },

    #[error("tensor `{tensor}` axis {axis} (shape {shape:?}): {reason}")]
    BadAxis {
        tensor: String,
        axis: usize,
        shape: Vec<usize>,
        reason: String,
    },

    #[error(
        "tensor `{tensor}` has dtype {dtype:?}, which vcycle cannot transform along a model axis"
    )]
    UnsupportedDtype { tensor: String, dtype: Dtype },

    #[error("no built-in architecture `{name}` (built-in: {known})")]
    UnknownPreset { name: String, known: String },

    #[error(
        "cannot detect the architecture of {path}: {reason}; name it (a preset or a rule file)"
    )]
    UnknownArchitecture { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },

    #[error(
        "invalid {} scheme ({what} groups): {reason}",
        if *what == "layer" { "depth" } else { "width" }
    )]
    Scheme { what: &'static str, reason: String },

    #[error("zero-initialised depth growth cannot grow architecture `{arch}` exactly: {reason}")]
    DepthInit { arch: String, reason: String },

    #[error(
        "checkpoints differ at tensor `{tensor}`: {reason} (interpolation needs equal names, shapes and dtypes)"
    )]
    Incompatible { tensor: String, reason: String },

    #[error("invalid interpolation weight alpha = {alpha}: {reason}")]
    Alpha { alpha: f64, reason: &'static str },

    /// A float input tensor holding NaN or infinite values, refused in strict mode.
    #[error(
        "{path}: tensor `{tensor}` holds {nan} NaN and {inf} infinite values (first at element {first}); refused in strict mode"
    )]
    NonFiniteInput {
        path: PathBuf,
        tensor: String,
        nan: usize,
        inf: usize,
        first: usize,
    },

    /// An output tensor whose finite inputs produced NaN or infinite values (a sum beyond the
    /// range of its dtype), refused in strict mode.
    #[error(
        "output tensor `{tensor}` would hold {count} NaN or infinite values ({dtype:?} overflow, first at element {first}); refused in strict mode"
    )]
    NonFiniteOutput {
        tensor: String,
        dtype: Dtype,
        count: usize,
        first: usize,
    },

    #[error("not enough memory to compute tensor `{tensor}` ({bytes} bytes)")]
    OutOfMemory { tensor: String, bytes: usize },

    #[error("output {output} {reason}")]
    Output { output: PathBuf, reason: String },

    /// An output path that exists, where replacing was not allowed.
    #[error("output {output} already exists")]
    OutputExists { output: PathBuf },

    /// A LAPACK failure while measuring a matrix's rank (`inspect --symmetry`, `linalg`).
    #[cfg(feature = "linalg")]
    #[error("tensor `{tensor}` (shape {shape:?}): singular values: {reason}")]
    Linalg {
        tensor: String,
        shape: Vec<usize>,
        reason: String,
    },

    #[error("forward pass: {0}")]
    Forward(#[from] crate::forward::ForwardError),

    #[error("architecture `{arch}` has no [forward] section, so its models cannot be run")]
    NoForward { arch: String },

    #[error(
        "{path}: architecture `{arch}` has no tensor with role `{role}`{}",
        layer.map(|l| format!(" in layer {l}")).unwrap_or_default()
    )]
    MissingRole {
        path: PathBuf,
        arch: String,
        role: String,
        layer: Option<usize>,
    },

    /// A tensor the forward pass cannot use in its role (a matrix that is not 2-D, a kernel
    /// that is not square, a fused axis that does not split).
    #[error("{path}: tensor `{tensor}` (shape {shape:?}): {reason}")]
    RoleShape {
        path: PathBuf,
        tensor: String,
        shape: Vec<usize>,
        /// What is wrong, naming the role.
        reason: String,
    },

    /// Two models, or a model and its input, that cannot be run against each other.
    #[error("cannot run {path}: {reason}")]
    Unrunnable { path: PathBuf, reason: String },

    /// A model whose outputs hold NaN or infinite values: `verify` cannot compare them.
    #[error(
        "{path}: the model's outputs hold {nan} NaN and {inf} infinite values (first at element {first}), so no difference can be measured"
    )]
    NonFiniteLogits {
        path: PathBuf,
        nan: usize,
        inf: usize,
        first: usize,
    },

    #[error("the outputs compared have different shapes: {reference:?} and {other:?}")]
    OutputShapes {
        reference: Vec<usize>,
        other: Vec<usize>,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
