//! Plan, then execute: one entry per output tensor with its sources, depth operation, per-axis
//! operation and shapes. The plan is the `--dry-run` output, serialises to JSON
//! (`--plan-json`) and is what the snapshot tests pin.
//!
//! This file defines the plan; the planners are in `resize.rs` (coalesce, de-coalesce),
//! `interpolate.rs` and `grow.rs`, and its text in `display.rs`.

use std::collections::BTreeMap;
use std::fmt;

use safetensors::Dtype;
use serde::Serialize;

use crate::anatomy::{Dims, EmbeddingRule};
use crate::ops::{AxisOp, Gather};
use crate::rules::{Axis, Direction, Space};
use crate::scheme::{Grouping, SchemeSpec};
use crate::similar::MergeCost;

mod display;
mod grow;
mod interpolate;
mod resize;

pub use grow::plan_grow;
pub use interpolate::{AlphaRange, check_alpha, check_alpha_in, plan_interpolate};
pub use resize::plan_resize;

/// The operator a plan applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "name")]
pub enum Operator {
    /// Large → small.
    Coalesce,
    /// Small → large.
    Decoalesce,
    /// (1 − α)·large + α·other, tensor by tensor.
    Interpolate {
        /// The other model's weight.
        alpha: f64,
    },
    /// De-coalesce, then interpolate with the saved large model, in one pass.
    Grow {
        /// The de-coalesced model's weight.
        alpha: f64,
    },
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operator::Coalesce => write!(f, "coalesce"),
            Operator::Decoalesce => write!(f, "decoalesce"),
            Operator::Interpolate { alpha } => write!(f, "interpolate (alpha = {alpha})"),
            Operator::Grow { alpha } => write!(f, "grow (alpha = {alpha})"),
        }
    }
}

/// What the user asked for: target sizes and schemes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Query heads of the other model (None: unchanged).
    pub heads: Option<usize>,
    /// Key/value heads of the other model (None: keep the query/kv ratio).
    pub kv_heads: Option<usize>,
    /// Layers of the other model (None: unchanged).
    pub layers: Option<usize>,
    /// How heads are grouped (strided, adjacent, similar, or explicit groups).
    pub width_scheme: SchemeSpec,
    /// How layers are grouped.
    pub depth_scheme: SchemeSpec,
    /// How embeddings are scaled when the width changes.
    pub embedding_rule: EmbeddingRule,
    /// How de-coalescing fills the layers that duplicate a small layer.
    pub depth_init: DepthInit,
}

/// How de-coalescing initialises the large layers of a depth group (docs/operator-contract.md §3, "Optional:
/// function-preserving depth growth").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DepthInit {
    /// Every layer of a group is a copy of its small layer (the paper's; stacks the layers).
    #[default]
    Copy,
    /// One layer per group is the copy; the others are copies whose attention-output and
    /// FFN-down weights and biases are zero, so in a pre-LN model they add nothing to the
    /// residual stream and the grown model computes the small model's function.
    Zero,
}

/// The roles zeroed by [`DepthInit::Zero`]: everything a pre-LN block writes to the residual
/// stream.
pub const RESIDUAL_OUTPUT_ROLES: [&str; 4] = [
    "attn.o.weight",
    "attn.o.bias",
    "mlp.down.weight",
    "mlp.down.bias",
];

impl Default for Target {
    fn default() -> Self {
        Target {
            heads: None,
            kv_heads: None,
            layers: None,
            width_scheme: SchemeSpec::Strided,
            depth_scheme: SchemeSpec::Strided,
            embedding_rule: EmbeddingRule::Exact,
            depth_init: DepthInit::Copy,
        }
    }
}

/// How a tensor's layers are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthOp {
    /// One source tensor.
    Single,
    /// The mean of the group's layers (coalescing).
    Mean,
    /// Non-float tensors: the first source, unchanged.
    First,
    /// All zeros: a residual output projection of a layer added by `--depth-init zero`.
    Zero,
}

/// One operation on one axis of an output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AxisPlan {
    /// The axis as the rule describes it (`hidden:in`, `attn+attn+attn:out`, `vocab`).
    pub axis: String,
    /// None when the axis is unchanged.
    pub op: Option<AxisOp>,
    pub from: usize,
    pub to: usize,
}

/// How one output tensor is computed.
#[derive(Debug, Clone, Serialize)]
pub struct TensorPlan {
    pub name: String,
    #[serde(serialize_with = "serialize_dtype")]
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Input tensors (a depth group when layers are merged).
    pub sources: Vec<String>,
    pub depth: DepthOp,
    pub axes: Vec<AxisPlan>,
    /// The saved large tensor interpolated with (interpolate and grow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interpolate_with: Option<String>,
    /// The axes the gathers act on (the rule's axes after the embedding rule).
    #[serde(skip)]
    pub(crate) rule_axes: Vec<Axis>,
}

fn serialize_dtype<S: serde::Serializer>(
    dtype: &Dtype,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&crate::dtype::name(*dtype))
}

/// Element-level groupings (large → small) of each model space.
#[derive(Debug, Clone)]
pub struct SpaceMaps {
    maps: BTreeMap<Space, Grouping>,
}

/// The gather of one axis, and the same gather over the largest blocks it moves whole.
#[derive(Debug)]
pub struct AxisGather {
    pub gather: Gather,
    /// [`Gather::blocks`] of `gather`: the gather over blocks, and the block size.
    pub blocks: (Gather, usize),
}

impl SpaceMaps {
    pub(crate) fn new(maps: BTreeMap<Space, Grouping>) -> Self {
        SpaceMaps { maps }
    }

    /// What a conversion does along `axis` (None: it is not changed).
    fn op(&self, axis: &Axis, coalescing: bool) -> Option<AxisOp> {
        let Axis::Model { parts, dir } = axis else {
            return None;
        };
        if !parts.iter().all(|p| self.maps.contains_key(p)) {
            return None;
        }
        Some(match (coalescing, dir) {
            (true, Direction::Out) => AxisOp::Mean,
            (true, Direction::In) => AxisOp::Sum,
            (false, Direction::Out) => AxisOp::Duplicate,
            (false, Direction::In) => AxisOp::Split,
        })
    }

    fn gather(&self, axis: &Axis, coalescing: bool) -> Option<AxisGather> {
        let op = self.op(axis, coalescing)?;
        let Axis::Model { parts, .. } = axis else {
            return None;
        };
        let gathers = parts
            .iter()
            .map(|p| self.maps.get(p).map(|g| Gather::new(op, g)))
            .collect::<Option<Vec<_>>>()?;
        let gather = Gather::concat(gathers);
        let blocks = gather.blocks();
        Some(AxisGather { gather, blocks })
    }
}

/// A complete, validated conversion plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The operator.
    pub operator: Operator,
    /// The architecture's name.
    pub arch: String,
    /// How embeddings are scaled (absent for interpolate).
    pub embedding_rule: Option<EmbeddingRule>,
    /// Sizes of the input model (the small one for grow).
    pub from: Option<Dims>,
    /// Sizes of the output model.
    pub to: Option<Dims>,
    /// Head groups (small head i = these large heads); absent for interpolate.
    pub head_groups: Option<Grouping>,
    /// Key/value head groups, when the model uses grouped-query attention.
    pub kv_head_groups: Option<Grouping>,
    /// Layer groups (small layer i = these large layers); absent when depth is unchanged.
    pub layer_groups: Option<Grouping>,
    /// The merge cost of head groups chosen by `similar` (and of strided ones, to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similar_heads: Option<MergeCost>,
    /// The merge cost of layer groups chosen by `similar`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similar_layers: Option<MergeCost>,
    /// `zero` when added layers have zero residual outputs (absent: copies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth_init: Option<DepthInit>,
    /// Set when a group size differs from another: the result cannot be function preserving.
    pub unequal_groups: bool,
    /// One entry per output tensor.
    pub tensors: Vec<TensorPlan>,
    #[serde(skip)]
    pub(crate) maps: Option<SpaceMaps>,
}

impl Plan {
    /// The gather of a rule axis (None where the plan does not change it); the executor builds
    /// each once per conversion.
    pub(crate) fn axis_gather(&self, axis: &Axis) -> Option<AxisGather> {
        let coalescing = matches!(self.operator, Operator::Coalesce);
        self.maps.as_ref()?.gather(axis, coalescing)
    }

    /// Whether finite inputs can give tensor `t` values beyond its dtype's range (or NaN):
    /// only a sum along an axis or an interpolation outside [0, 1] can. Means, copies, splits
    /// and convex combinations stay within the range of their inputs, which their dtype holds.
    pub fn may_overflow(&self, t: &TensorPlan) -> bool {
        let extrapolates = match self.operator {
            Operator::Interpolate { alpha } | Operator::Grow { alpha } => {
                !(0.0..=1.0).contains(&alpha)
            }
            Operator::Coalesce | Operator::Decoalesce => false,
        };
        extrapolates || t.axes.iter().any(|a| a.op == Some(AxisOp::Sum))
    }

    /// Bytes of the output tensors.
    pub fn output_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| crate::dtype::byte_len(t.dtype, &t.shape).unwrap_or(0) as u64)
            .sum()
    }
}

/// Orders `h.2.x` before `h.10.x`.
pub fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut text = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = c.to_string();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            key.push((
                std::mem::take(&mut text),
                digits.parse().unwrap_or(u64::MAX),
            ));
        } else {
            text.push(c);
        }
    }
    key.push((text, 0));
    key
}
