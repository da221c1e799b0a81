//! The one error type of the transform library.

use std::path::PathBuf;

use safetensors::Dtype;

/// Everything that can go wrong while reading, planning, transforming or writing a checkpoint.
///
/// Variants carry the file, tensor, axis and shape they are about, so a message can say
/// exactly what is wrong without the caller adding context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory that could not be read, written, created or listed.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file whose bytes are not a well-formed safetensors file; `reason` names the tensor
    /// and the offending field where there is one.
    #[error("{path}: not a valid safetensors file: {reason}")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with the file.
        reason: String,
    },

    /// JSON that could not be parsed from a file, or serialised to be written to one.
    #[error("{path}: invalid JSON")]
    Json {
        /// The file the JSON is read from or written to.
        path: PathBuf,
        /// The parser's or serialiser's error.
        #[source]
        source: serde_json::Error,
    },

    /// A checkpoint whose files do not fit together (no weights file, an index that disagrees
    /// with its shards, a missing layer), or a file vcycle will not read.
    #[error("{path}: {reason}")]
    InvalidCheckpoint {
        /// The checkpoint directory or the file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A tensor stored in more than one file of a checkpoint.
    #[error("{path}: tensor `{tensor}` appears in more than one file")]
    DuplicateTensor {
        /// The file holding the tensor again.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },

    /// A rule file, or a built-in architecture, that cannot be parsed or used.
    #[error("rule file {file}: {message}")]
    RuleFile {
        /// The rule file's path, or the architecture's name for a built-in one.
        file: String,
        /// What is wrong.
        message: String,
    },

    /// A tensor of the checkpoint that no rule of the architecture claims.
    #[error("{path}: tensor `{tensor}` is not claimed by any rule of architecture `{arch}`")]
    UnclaimedTensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The architecture's name.
        arch: String,
    },

    /// A tensor the architecture or the plan needs that the checkpoint lacks.
    #[error("{path}: required tensor `{tensor}` of architecture `{arch}` is missing")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The architecture's name; empty where none is known.
        arch: String,
    },

    /// A tensor whose number of axes differs from its rule's.
    #[error(
        "{path}: tensor `{tensor}` has shape {shape:?}, but rule `{rule}` declares {rank} axes"
    )]
    RankMismatch {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The rule's tensor-name template.
        rule: String,
        /// The number of axes the rule declares.
        rank: usize,
    },

    /// A tensor axis whose size disagrees with the size of its space.
    #[error(
        "tensor `{tensor}` axis {axis} has size {found} (shape {shape:?}), but space `{space}` has size {expected}{origin}"
    )]
    SpaceSizeMismatch {
        /// The tensor's name.
        tensor: String,
        /// The axis, counted from 0.
        axis: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The space's name.
        space: String,
        /// The space's size.
        expected: usize,
        /// The axis's size, or the size of one part for an axis of equal parts.
        found: usize,
        /// Where `expected` comes from: a parenthesised phrase, after a space, ending the
        /// message.
        origin: String,
    },

    /// A tensor whose shape or bytes do not fit what is done along one of its axes.
    #[error("tensor `{tensor}` axis {axis} (shape {shape:?}): {reason}")]
    BadAxis {
        /// The tensor's name.
        tensor: String,
        /// The axis, counted from 0.
        axis: usize,
        /// The tensor's shape; empty where it is not known.
        shape: Vec<usize>,
        /// What is wrong.
        reason: String,
    },

    /// A tensor whose dtype vcycle cannot decode, encode or transform.
    #[error(
        "tensor `{tensor}` has dtype {dtype:?}, which vcycle cannot transform along a model axis"
    )]
    UnsupportedDtype {
        /// The tensor's name.
        tensor: String,
        /// The tensor's dtype.
        dtype: Dtype,
    },

    /// A name that is not one of the built-in architectures.
    #[error("no built-in architecture `{name}` (built-in: {known})")]
    UnknownPreset {
        /// The name given.
        name: String,
        /// The built-in architectures' names.
        known: String,
    },

    /// A checkpoint whose architecture matches no built-in one, by config.json or by tensor
    /// names.
    #[error(
        "cannot detect the architecture of {path}: {reason}; name it (a preset or a rule file)"
    )]
    UnknownArchitecture {
        /// The checkpoint.
        path: PathBuf,
        /// Why no architecture matches.
        reason: String,
    },

    /// A config.json that is not a JSON object, or a value of it that is not a valid size or
    /// disagrees with the tensors.
    #[error("{path}: {reason}")]
    Config {
        /// The config.json file.
        path: PathBuf,
        /// What is wrong, naming the key where there is one.
        reason: String,
    },

    /// A grouping of the large model's units into the small model's that cannot be made.
    #[error(
        "invalid {} scheme ({what} groups): {reason}",
        if *what == "layer" { "depth" } else { "width" }
    )]
    Scheme {
        /// The units grouped: `"layer"` for depth; `"head"`, `"key/value head"` or `"width"`
        /// for width.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// A depth growth with zero-initialised new layers that cannot keep the model's outputs
    /// unchanged for this architecture or these layer groups.
    #[error("zero-initialised depth growth cannot grow architecture `{arch}` exactly: {reason}")]
    DepthInit {
        /// The architecture's name.
        arch: String,
        /// Why not.
        reason: String,
    },

    /// Two checkpoints, or two tensors of one rule, that differ where they must match.
    #[error(
        "checkpoints differ at tensor `{tensor}`: {reason} (interpolation needs equal names, shapes and dtypes)"
    )]
    Incompatible {
        /// The tensor's name.
        tensor: String,
        /// How they differ.
        reason: String,
    },

    /// An interpolation weight that is not finite, or outside [0, 1] where extrapolation is
    /// not allowed.
    #[error("invalid interpolation weight alpha = {alpha}: {reason}")]
    Alpha {
        /// The weight given.
        alpha: f64,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A float input tensor holding NaN or infinite values, refused in strict mode.
    #[error(
        "{path}: tensor `{tensor}` holds {nan} NaN and {inf} infinite values (first at element {first}); refused in strict mode"
    )]
    NonFiniteInput {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The number of NaN values.
        nan: usize,
        /// The number of infinite values.
        inf: usize,
        /// The index of the first non-finite element.
        first: usize,
    },

    /// An output tensor whose finite inputs produced NaN or infinite values (a sum beyond the
    /// range of its dtype), refused in strict mode.
    #[error(
        "output tensor `{tensor}` would hold {count} NaN or infinite values ({dtype:?} overflow, first at element {first}); refused in strict mode"
    )]
    NonFiniteOutput {
        /// The output tensor's name.
        tensor: String,
        /// The output tensor's dtype.
        dtype: Dtype,
        /// The number of NaN and infinite values.
        count: usize,
        /// The index of the first non-finite element.
        first: usize,
    },

    /// A buffer for computing a tensor that could not be allocated.
    #[error("not enough memory to compute tensor `{tensor}` ({bytes} bytes)")]
    OutOfMemory {
        /// The tensor's name.
        tensor: String,
        /// The size asked for, in bytes.
        bytes: usize,
    },

    /// An output that cannot be written, flushed to disk or moved into place.
    #[error("output {output} {reason}")]
    Output {
        /// The output path.
        output: PathBuf,
        /// What went wrong, as the rest of the sentence (`cannot be written: ...`).
        reason: String,
    },

    /// An output path that exists, where replacing was not allowed.
    #[error("output {output} already exists")]
    OutputExists {
        /// The output path.
        output: PathBuf,
    },

    /// A LAPACK failure while measuring a matrix's rank (`inspect --symmetry`, `linalg`).
    #[cfg(feature = "linalg")]
    #[error("tensor `{tensor}` (shape {shape:?}): singular values: {reason}")]
    Linalg {
        /// The tensor's name.
        tensor: String,
        /// The matrix's shape: rows, then columns.
        shape: Vec<usize>,
        /// The error computing the singular values.
        reason: String,
    },

    /// A failure of the forward pass.
    #[error("forward pass: {0}")]
    Forward(#[from] crate::forward::ForwardError),

    /// An architecture whose rules have no `[forward]` section.
    #[error("architecture `{arch}` has no [forward] section, so its models cannot be run")]
    NoForward {
        /// The architecture's name.
        arch: String,
    },

    /// A role the forward pass needs that no tensor of the checkpoint has.
    #[error(
        "{path}: architecture `{arch}` has no tensor with role `{role}`{}",
        layer.map(|l| format!(" in layer {l}")).unwrap_or_default()
    )]
    MissingRole {
        /// The checkpoint.
        path: PathBuf,
        /// The architecture's name.
        arch: String,
        /// The role's name.
        role: String,
        /// The layer, for a role of each layer; `None` for a role of the whole model.
        layer: Option<usize>,
    },

    /// A tensor the forward pass cannot use in its role (a matrix that is not 2-D, a kernel
    /// that is not square, a fused axis that does not split).
    #[error("{path}: tensor `{tensor}` (shape {shape:?}): {reason}")]
    RoleShape {
        /// The file holding the tensor, or the checkpoint where no tensor has the role.
        path: PathBuf,
        /// The tensor's name; empty where no tensor has the role.
        tensor: String,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// What is wrong, naming the role.
        reason: String,
    },

    /// Two models, or a model and its input, that cannot be run against each other.
    #[error("cannot run {path}: {reason}")]
    Unrunnable {
        /// The model's checkpoint.
        path: PathBuf,
        /// Why it cannot be run.
        reason: String,
    },

    /// A model whose outputs hold NaN or infinite values: `verify` cannot compare them.
    #[error(
        "{path}: the model's outputs hold {nan} NaN and {inf} infinite values (first at element {first}), so no difference can be measured"
    )]
    NonFiniteLogits {
        /// The model's checkpoint.
        path: PathBuf,
        /// The number of NaN values.
        nan: usize,
        /// The number of infinite values.
        inf: usize,
        /// The index of the first non-finite element.
        first: usize,
    },

    /// Two models' outputs of different shapes, which cannot be compared.
    #[error("the outputs compared have different shapes: {reference:?} and {other:?}")]
    OutputShapes {
        /// The reference model's output shape.
        reference: Vec<usize>,
        /// The other model's output shape.
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
