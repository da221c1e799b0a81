//! Plan, then execute: one entry per output tensor with its sources, depth operation, per-axis
//! operation and shapes. The plan is the `--dry-run` output, serialises to JSON
//! (`--plan-json`) and is what the snapshot tests pin.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use safetensors::Dtype;
use serde::Serialize;

use crate::anatomy::{Anatomy, Dims, EmbeddingRule};
use crate::error::{Error, Result};
use crate::ops::{AxisOp, Gather};
use crate::read::Checkpoint;
use crate::rules::{Axis, Direction, Placement, Space};
use crate::scheme::{Grouping, MAX_UNITS, SchemeSpec};
use crate::similar::MergeCost;

/// The operator a plan applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "name")]
pub enum Operator {
    /// Large → small.
    Coalesce,
    /// Small → large.
    Decoalesce,
    /// (1 − α)·large + α·other, tensor by tensor.
    Interpolate { alpha: f64 },
    /// De-coalesce, then interpolate with the saved large model, in one pass.
    Grow { alpha: f64 },
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
    pub width_scheme: SchemeSpec,
    pub depth_scheme: SchemeSpec,
    pub embedding_rule: EmbeddingRule,
    /// How de-coalescing fills the layers that duplicate a small layer.
    pub depth_init: DepthInit,
}

/// How de-coalescing initialises the large layers of a depth group (docs/operator-contract.md §3, "Optional:
/// function-preserving depth growth").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
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
#[derive(Debug)]
pub struct SpaceMaps {
    maps: BTreeMap<Space, Grouping>,
    /// The gathers built so far, by axis and by whether they coalesce: the tensors of every
    /// layer share their axes, and building a gather costs more than computing a small tensor.
    built: Mutex<HashMap<(Axis, bool), Arc<AxisGather>>>,
}

/// The gather of one axis, and the same gather over the largest blocks it moves whole.
#[derive(Debug)]
pub struct AxisGather {
    pub gather: Gather,
    /// [`Gather::blocks`] of `gather`: the gather over blocks, and the block size.
    pub blocks: (Gather, usize),
}

impl Clone for SpaceMaps {
    fn clone(&self) -> Self {
        SpaceMaps::new(self.maps.clone())
    }
}

impl SpaceMaps {
    fn new(maps: BTreeMap<Space, Grouping>) -> Self {
        SpaceMaps {
            maps,
            built: Mutex::default(),
        }
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

    fn gather(&self, axis: &Axis, coalescing: bool) -> Option<Arc<AxisGather>> {
        let key = (axis.clone(), coalescing);
        if let Some(built) = self.built.lock().ok()?.get(&key) {
            return Some(built.clone());
        }
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
        let built = Arc::new(AxisGather { gather, blocks });
        self.built.lock().ok()?.insert(key, built.clone());
        Some(built)
    }
}

/// A complete, validated conversion plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub operator: Operator,
    pub arch: String,
    pub embedding_rule: Option<EmbeddingRule>,
    /// Sizes of the input model (the small one for grow).
    pub from: Option<Dims>,
    /// Sizes of the output model.
    pub to: Option<Dims>,
    /// Head groups (small head i = these large heads); absent for interpolate.
    pub head_groups: Option<Grouping>,
    /// Key/value head groups, when the model uses grouped-query attention.
    pub kv_head_groups: Option<Grouping>,
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
    pub tensors: Vec<TensorPlan>,
    #[serde(skip)]
    pub(crate) maps: Option<SpaceMaps>,
}

impl Plan {
    /// The gather of each planned axis of a tensor, in axis order; None where the axis is
    /// unchanged.
    pub fn axis_gathers(&self, tensor: &TensorPlan) -> Vec<Option<Arc<AxisGather>>> {
        let coalescing = matches!(self.operator, Operator::Coalesce);
        tensor
            .axes
            .iter()
            .zip(&tensor.rule_axes)
            .map(|(axis_plan, rule_axis)| {
                axis_plan.op?;
                self.maps.as_ref()?.gather(rule_axis, coalescing)
            })
            .collect()
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

/// Plans coalescing (large input → small output) or de-coalescing (small input → large output).
pub fn plan_resize(
    checkpoint: &Checkpoint,
    anatomy: &Anatomy,
    target: &Target,
    coalescing: bool,
) -> Result<Plan> {
    let from = &anatomy.dims;
    let what = if coalescing {
        "coalesce"
    } else {
        "de-coalesce"
    };

    // Sizes on both sides; grouping always maps the large model's units to the small one's.
    let heads_other = target.heads.unwrap_or(from.heads);
    let limits = [
        ("width", "heads", Some(heads_other)),
        ("width", "key/value heads", target.kv_heads),
        ("layer", "layers", target.layers),
    ];
    for (what, unit, requested) in limits {
        if let Some(n) = requested.filter(|&n| n > MAX_UNITS) {
            return Err(Error::Scheme {
                what,
                reason: format!("{n} {unit} is more than the {MAX_UNITS} vcycle supports"),
            });
        }
    }
    let ratio = from
        .heads
        .checked_div(from.kv_heads)
        .filter(|&r| r > 0 && r * from.kv_heads == from.heads)
        .ok_or_else(|| Error::Scheme {
            what: "width",
            reason: format!(
                "the model's {} query heads are not a multiple of its {} key/value heads",
                from.heads, from.kv_heads
            ),
        })?;
    let gqa = from.kv_heads != from.heads;
    let kv_other = match target.kv_heads {
        Some(kv) => kv,
        None if heads_other.is_multiple_of(ratio) => heads_other / ratio,
        None => {
            return Err(Error::Scheme {
                what: "width",
                reason: format!(
                    "{heads_other} heads cannot keep {ratio} query heads per key/value head; give --kv-heads"
                ),
            });
        }
    };
    if kv_other == 0 || !heads_other.is_multiple_of(kv_other) || heads_other / kv_other != ratio {
        return Err(Error::Scheme {
            what: "width",
            reason: format!(
                "{heads_other} query heads over {kv_other} key/value heads changes the {ratio} query heads per key/value head of the model"
            ),
        });
    }
    let (heads_large, heads_small, kv_large, kv_small) = if coalescing {
        (from.heads, heads_other, from.kv_heads, kv_other)
    } else {
        (heads_other, from.heads, kv_other, from.kv_heads)
    };
    if heads_small > heads_large {
        return Err(Error::Scheme {
            what: "width",
            reason: format!("cannot {what} {} heads to {heads_other}", from.heads),
        });
    }

    // `similar` groups come from the large model's weights: this input when coalescing;
    // plan_grow resolves them from the saved large model before it calls this.
    let similar_refused = |what: &'static str, line: &str| Error::Scheme {
        what,
        reason: format!(
            "`similar` chooses groups from the large model's weights, and de-coalescing reads only the small model: use `vcycle grow SMALL --large SAVED_LARGE` (it recomputes them from the saved large model), or pass the groups coalescing chose (the `{line}:` line of its plan, --dry-run) as JSON"
        ),
    };
    let mut similar_heads = None;
    let width_scheme = match &target.width_scheme {
        // Nothing to choose when no heads merge.
        SchemeSpec::Similar if heads_small == heads_large => SchemeSpec::Strided,
        SchemeSpec::Similar if coalescing => {
            let small = if gqa { kv_small } else { heads_small };
            let chosen =
                crate::similar::head_groups(checkpoint, anatomy, target.embedding_rule, small)?;
            similar_heads = Some(chosen.cost);
            SchemeSpec::Explicit(chosen.groups)
        }
        SchemeSpec::Similar => {
            let line = if gqa { "kv head groups" } else { "head groups" };
            return Err(similar_refused("width", line));
        }
        other => other.clone(),
    };
    let (head_groups, kv_head_groups) = if gqa {
        let kv = Grouping::new(&width_scheme, kv_large, kv_small, "key/value head")?;
        (kv.induce_queries(ratio), Some(kv))
    } else {
        (
            Grouping::new(&width_scheme, heads_large, heads_small, "head")?,
            None,
        )
    };
    let kv_groups = kv_head_groups
        .clone()
        .unwrap_or_else(|| head_groups.clone());

    let layers_other = target.layers.unwrap_or(from.layers);
    let (layers_large, layers_small) = if coalescing {
        (from.layers, layers_other)
    } else {
        (layers_other, from.layers)
    };
    let mut similar_layers = None;
    let layer_groups = if from.layers == 0 && layers_other == 0 {
        Grouping::identity(0)
    } else {
        let depth_scheme = match &target.depth_scheme {
            SchemeSpec::Similar if layers_small == layers_large => SchemeSpec::Strided,
            SchemeSpec::Similar if coalescing => {
                let chosen = crate::similar::layer_groups(checkpoint, anatomy, layers_small)?;
                similar_layers = Some(chosen.cost);
                SchemeSpec::Explicit(chosen.groups)
            }
            SchemeSpec::Similar => return Err(similar_refused("layer", "layer groups")),
            other => other.clone(),
        };
        Grouping::new(&depth_scheme, layers_large, layers_small, "layer")?
    };

    // --depth-init zero: the layers of each group other than the one kept are identities.
    let kept_layers = match target.depth_init {
        DepthInit::Zero if !coalescing && layer_groups.groups().iter().any(|g| g.len() > 1) => {
            Some(zero_init_kept_layers(anatomy, &layer_groups)?)
        }
        _ => None,
    };

    // resolve_dims checked that hidden and ffn are multiples of heads (heads > 0).
    let hidden_block = from.hidden.checked_div(from.heads).unwrap_or(0);
    let ffn_block = from.ffn.checked_div(from.heads).unwrap_or(0);
    let too_large = |what: &str| Error::Scheme {
        what: "width",
        reason: format!("{heads_other} heads make the {what} too large"),
    };
    let to = Dims {
        layers: layers_other,
        hidden: hidden_block
            .checked_mul(heads_other)
            .ok_or_else(|| too_large("hidden size"))?,
        heads: heads_other,
        kv_heads: kv_other,
        head_dim: from.head_dim,
        ffn: ffn_block
            .checked_mul(heads_other)
            .ok_or_else(|| too_large("FFN size"))?,
        tied: from.tied,
        fixed: from.fixed.clone(),
    };

    // Element-level groupings, only of the spaces some claimed tensor has (a size no tensor
    // backs, say from config.json alone, is never expanded into a table).
    let used: std::collections::BTreeSet<Space> = anatomy
        .claims
        .iter()
        .filter_map(|c| anatomy.rules.tensors.get(c.rule))
        .flat_map(|rule| {
            // A tied head is transformed along its target's axes (effective_axes).
            let tied = rule
                .tied_to
                .as_ref()
                .and_then(|target| anatomy.rules.tensors.iter().find(|r| &r.template == target));
            rule.axes
                .iter()
                .chain(tied.into_iter().flat_map(|r| r.axes.iter()))
        })
        .filter_map(|axis| match axis {
            Axis::Model { parts, .. } => Some(parts.iter().copied()),
            Axis::Fixed(_) => None,
        })
        .flatten()
        .collect();
    let mut maps = BTreeMap::new();
    for space in used {
        let grouping = match space {
            Space::Hidden => head_groups.expand(hidden_block),
            Space::Ffn => head_groups.expand(ffn_block),
            Space::Attn => head_groups.expand(from.head_dim),
            Space::Kv => kv_groups.expand(from.head_dim),
        };
        maps.insert(space, grouping);
    }
    let maps = SpaceMaps::new(maps);

    let unequal_groups =
        !head_groups.is_equal() || !layer_groups.is_equal() || !kv_groups.is_equal();

    let mut tensors = Vec::new();
    for (index, rule) in anatomy.rules.tensors.iter().enumerate() {
        let claims: Vec<_> = anatomy.claims.iter().filter(|c| c.rule == index).collect();
        let Some(first) = claims.first() else {
            continue;
        };
        let Some(info) = checkpoint.info(&first.name) else {
            continue;
        };
        let axes = anatomy.effective_axes(index, target.embedding_rule);
        if axes.len() != info.shape.len() {
            return Err(Error::RankMismatch {
                path: checkpoint
                    .file_of(&first.name)
                    .unwrap_or(checkpoint.path())
                    .to_path_buf(),
                tensor: first.name.clone(),
                shape: info.shape.clone(),
                rule: rule.template.clone(),
                rank: axes.len(),
            });
        }
        let float = crate::dtype::is_float(info.dtype);
        let mut axis_plans = Vec::with_capacity(axes.len());
        for (axis, &size) in axes.iter().zip(&info.shape) {
            let from_size = from.axis(axis).unwrap_or(size);
            let to_size = to.axis(axis).unwrap_or(size);
            let op = maps.op(axis, coalescing);
            if op.is_some() && !float {
                return Err(Error::UnsupportedDtype {
                    tensor: first.name.clone(),
                    dtype: info.dtype,
                });
            }
            axis_plans.push(AxisPlan {
                axis: axis.to_string(),
                op: if head_groups.is_identity() { None } else { op },
                from: from_size,
                to: to_size,
            });
        }
        let shape: Vec<usize> = axis_plans.iter().map(|a| a.to).collect();
        if crate::dtype::byte_len(info.dtype, &shape).is_none_or(|n| n > isize::MAX as usize) {
            return Err(Error::BadAxis {
                tensor: first.name.clone(),
                axis: 0,
                shape: info.shape.clone(),
                reason: format!("the output shape {shape:?} would be too large"),
            });
        }
        let outputs: Vec<(Option<usize>, Vec<Option<usize>>)> = if rule.layered {
            if coalescing {
                layer_groups
                    .groups()
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (Some(i), g.iter().map(|&u| Some(u)).collect()))
                    .collect()
            } else {
                (0..layer_groups.large())
                    .map(|u| (Some(u), vec![Some(layer_groups.owner(u))]))
                    .collect()
            }
        } else {
            vec![(None, vec![None])]
        };
        for (layer, source_layers) in outputs {
            let sources: Vec<String> = source_layers
                .iter()
                .map(|l| rule.name(&anatomy.prefix, *l))
                .collect();
            for source in &sources {
                match checkpoint.info(source) {
                    Some(s) if s.dtype == info.dtype && s.shape == info.shape => {}
                    Some(s) => {
                        return Err(Error::Incompatible {
                            tensor: source.clone(),
                            reason: format!(
                                "{:?} {:?} differs from `{}` ({:?} {:?}) of the same rule",
                                s.dtype, s.shape, first.name, info.dtype, info.shape
                            ),
                        });
                    }
                    None => {
                        return Err(Error::MissingTensor {
                            path: checkpoint.path().to_path_buf(),
                            tensor: source.clone(),
                            arch: anatomy.rules.name.clone(),
                        });
                    }
                }
            }
            let zeroed = kept_layers.as_ref().is_some_and(|kept| {
                layer.is_some_and(|l| !kept.contains(&l))
                    && rule
                        .role
                        .as_deref()
                        .is_some_and(|r| RESIDUAL_OUTPUT_ROLES.contains(&r))
            });
            let depth = match (sources.len(), float) {
                _ if zeroed && float => DepthOp::Zero,
                (1, _) => DepthOp::Single,
                (_, true) => DepthOp::Mean,
                (_, false) => DepthOp::First,
            };
            tensors.push(TensorPlan {
                name: rule.name(&anatomy.prefix, layer),
                dtype: info.dtype,
                shape: shape.clone(),
                sources,
                depth,
                axes: axis_plans.clone(),
                interpolate_with: None,
                rule_axes: axes.clone(),
            });
        }
    }
    tensors.sort_by_cached_key(|t| natural_key(&t.name));

    Ok(Plan {
        operator: if coalescing {
            Operator::Coalesce
        } else {
            Operator::Decoalesce
        },
        arch: anatomy.rules.name.clone(),
        embedding_rule: Some(target.embedding_rule),
        from: Some(from.clone()),
        to: Some(to),
        head_groups: Some(head_groups),
        kv_head_groups,
        layer_groups: Some(layer_groups),
        similar_heads,
        similar_layers,
        depth_init: kept_layers.map(|_| DepthInit::Zero),
        unequal_groups,
        tensors,
        maps: Some(maps),
    })
}

/// The large layer of each depth group that keeps the small layer's weights under
/// `--depth-init zero`: the group's lowest layer above the previous group's kept layer, so the
/// kept layers run in the small model's order (the group's first layer for strided and
/// adjacent groups). Refuses models where a zero-output block is not the identity.
fn zero_init_kept_layers(anatomy: &Anatomy, layer_groups: &Grouping) -> Result<Vec<usize>> {
    let arch = &anatomy.rules.name;
    let refuse = |reason: String| Error::DepthInit {
        arch: arch.clone(),
        reason,
    };
    match anatomy.rules.forward.as_ref().map(|f| f.placement) {
        Some(Placement::Pre) => {}
        Some(Placement::Post) => {
            return Err(refuse(
                "it is post-LN: the norm after each residual sum changes the hidden states even when the block adds zero; only pre-LN models (GPT-2, Llama, ViT) can grow this way".into(),
            ));
        }
        None => {
            return Err(refuse(
                "its rule file has no [forward] section, so whether it is pre-LN is unknown".into(),
            ));
        }
    }
    for role in ["attn.o.weight", "mlp.down.weight"] {
        if anatomy.by_role(role, Some(0)).is_none() {
            return Err(refuse(format!(
                "no tensor has the role `{role}` (the residual output projections to zero)"
            )));
        }
    }
    let mut kept = Vec::with_capacity(layer_groups.small());
    for (i, group) in layer_groups.groups().iter().enumerate() {
        let after = kept.last().copied();
        let Some(&layer) = group.iter().filter(|&&l| after.is_none_or(|a| l > a)).min() else {
            return Err(refuse(format!(
                "the layer groups {} cannot keep the small model's layer order: group {i} has no layer after layer {} (kept for group {})",
                crate::scheme::format_groups(layer_groups.groups()),
                after.unwrap_or(0),
                i.saturating_sub(1)
            )));
        };
        kept.push(layer);
    }
    Ok(kept)
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

/// Which interpolation weights are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaRange {
    /// α in [0, 1]: a point between the two checkpoints (the default).
    #[default]
    Interpolate,
    /// Any finite α: a point on the line beyond either checkpoint (`--allow-extrapolation`).
    Extrapolate,
}

/// Checks that α is an interpolation weight in [0, 1].
pub fn check_alpha(alpha: f64) -> Result<()> {
    check_alpha_in(alpha, AlphaRange::Interpolate)
}

/// Checks α against a range; NaN and infinities are always refused.
pub fn check_alpha_in(alpha: f64, range: AlphaRange) -> Result<()> {
    if !alpha.is_finite() {
        return Err(Error::Alpha {
            alpha,
            reason: "it must be a finite number",
        });
    }
    if range == AlphaRange::Interpolate && !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Alpha {
            alpha,
            reason: "it must lie in [0, 1] (pass --allow-extrapolation to extrapolate beyond the checkpoints)",
        });
    }
    Ok(())
}

/// Plans θ = (1 − α)·large + α·other over two checkpoints with equal names, shapes and dtypes.
pub fn plan_interpolate(
    large: &Checkpoint,
    other: &Checkpoint,
    alpha: f64,
    range: AlphaRange,
) -> Result<Plan> {
    check_alpha_in(alpha, range)?;
    for name in other.tensors().keys() {
        if large.info(name).is_none() {
            return Err(Error::Incompatible {
                tensor: name.clone(),
                reason: format!(
                    "present in {} but not in {}",
                    other.path().display(),
                    large.path().display()
                ),
            });
        }
    }
    let mut tensors = Vec::with_capacity(large.tensors().len());
    for (name, info) in large.tensors() {
        let Some(o) = other.info(name) else {
            return Err(Error::Incompatible {
                tensor: name.clone(),
                reason: format!(
                    "present in {} but not in {}",
                    large.path().display(),
                    other.path().display()
                ),
            });
        };
        if o.shape != info.shape || o.dtype != info.dtype {
            return Err(Error::Incompatible {
                tensor: name.clone(),
                reason: format!(
                    "{:?} {:?} in {} but {:?} {:?} in {}",
                    info.dtype,
                    info.shape,
                    large.path().display(),
                    o.dtype,
                    o.shape,
                    other.path().display()
                ),
            });
        }
        tensors.push(TensorPlan {
            name: name.clone(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            sources: vec![name.clone()],
            depth: DepthOp::Single,
            axes: Vec::new(),
            interpolate_with: Some(name.clone()),
            rule_axes: Vec::new(),
        });
    }
    tensors.sort_by_cached_key(|t| natural_key(&t.name));
    Ok(Plan {
        operator: Operator::Interpolate { alpha },
        arch: String::new(),
        embedding_rule: None,
        from: None,
        to: None,
        head_groups: None,
        kv_head_groups: None,
        layer_groups: None,
        similar_heads: None,
        similar_layers: None,
        depth_init: None,
        unequal_groups: false,
        tensors,
        maps: None,
    })
}

/// Plans the V-cycle's way up: de-coalesce `small` to the sizes of the saved `large` model,
/// then interpolate with it. Sizes not given in `target` are taken from `large`.
pub fn plan_grow(
    small: &Checkpoint,
    small_anatomy: &Anatomy,
    large: &Checkpoint,
    large_anatomy: &Anatomy,
    target: &Target,
    alpha: f64,
    range: AlphaRange,
) -> Result<Plan> {
    check_alpha_in(alpha, range)?;
    // `similar` groups are recomputed from the saved large model: the checkpoint coalescing
    // read, so the criterion, being deterministic, gives the groups coalescing used.
    let (large_dims, small_dims) = (&large_anatomy.dims, &small_anatomy.dims);
    let mut similar_heads = None;
    let width_scheme = match &target.width_scheme {
        SchemeSpec::Similar if small_dims.heads != large_dims.heads => {
            let small_units = if large_dims.kv_heads == large_dims.heads {
                small_dims.heads
            } else {
                small_dims.kv_heads
            };
            let chosen = crate::similar::head_groups(
                large,
                large_anatomy,
                target.embedding_rule,
                small_units,
            )?;
            similar_heads = Some(chosen.cost);
            SchemeSpec::Explicit(chosen.groups)
        }
        other => other.clone(),
    };
    let mut similar_layers = None;
    let depth_scheme = match &target.depth_scheme {
        SchemeSpec::Similar if small_dims.layers != large_dims.layers => {
            let chosen = crate::similar::layer_groups(large, large_anatomy, small_dims.layers)?;
            similar_layers = Some(chosen.cost);
            SchemeSpec::Explicit(chosen.groups)
        }
        other => other.clone(),
    };
    let target = Target {
        heads: Some(target.heads.unwrap_or(large_dims.heads)),
        kv_heads: Some(target.kv_heads.unwrap_or(large_dims.kv_heads)),
        layers: Some(target.layers.unwrap_or(large_dims.layers)),
        width_scheme,
        depth_scheme,
        ..target.clone()
    };
    let mut plan = plan_resize(small, small_anatomy, &target, false)?;
    plan.similar_heads = similar_heads;
    plan.similar_layers = similar_layers;
    let planned: std::collections::BTreeSet<&str> =
        plan.tensors.iter().map(|t| t.name.as_str()).collect();
    if let Some(extra) = large
        .tensors()
        .keys()
        .find(|n| !planned.contains(n.as_str()))
    {
        return Err(Error::Incompatible {
            tensor: extra.clone(),
            reason: format!(
                "present in the large model {} but not produced by de-coalescing {}",
                large.path().display(),
                small.path().display()
            ),
        });
    }
    for t in &mut plan.tensors {
        let Some(info) = large.info(&t.name) else {
            return Err(Error::Incompatible {
                tensor: t.name.clone(),
                reason: format!("missing from the large model {}", large.path().display()),
            });
        };
        if info.shape != t.shape || info.dtype != t.dtype {
            return Err(Error::Incompatible {
                tensor: t.name.clone(),
                reason: format!(
                    "de-coalescing gives {:?} {:?} but the large model {} has {:?} {:?}",
                    t.dtype,
                    t.shape,
                    large.path().display(),
                    info.dtype,
                    info.shape
                ),
            });
        }
        t.interpolate_with = Some(t.name.clone());
    }
    plan.operator = Operator::Grow { alpha };
    Ok(plan)
}

impl fmt::Display for Plan {
    /// One line per output tensor: name, dtype and shape, sources, depth and axis operations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "operator: {}", self.operator)?;
        if !self.arch.is_empty() {
            writeln!(f, "architecture: {}", self.arch)?;
        }
        if let Some(rule) = self.embedding_rule {
            writeln!(
                f,
                "embedding rule: {}",
                serde_json::to_value(rule)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )?;
        }
        if let (Some(from), Some(to)) = (&self.from, &self.to) {
            writeln!(
                f,
                "sizes: layers {} -> {}, hidden {} -> {}, heads {} -> {}, kv heads {} -> {}, head size {}, ffn {} -> {}",
                from.layers,
                to.layers,
                from.hidden,
                to.hidden,
                from.heads,
                to.heads,
                from.kv_heads,
                to.kv_heads,
                from.head_dim,
                from.ffn,
                to.ffn
            )?;
        }
        if let Some(g) = &self.head_groups {
            writeln!(
                f,
                "head groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        if let Some(g) = &self.kv_head_groups {
            writeln!(
                f,
                "kv head groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        if let Some(g) = &self.layer_groups {
            writeln!(
                f,
                "layer groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        let width = if self.kv_head_groups.is_some() {
            "kv head"
        } else {
            "head"
        };
        let similar = [(width, self.similar_heads), ("layer", self.similar_layers)];
        for (what, cost) in similar {
            if let Some(c) = cost {
                writeln!(
                    f,
                    "similar {what} groups: merge cost {:.4e} (strided: {:.4e})",
                    c.chosen, c.strided
                )?;
            }
        }
        if self.depth_init == Some(DepthInit::Zero) {
            writeln!(
                f,
                "depth init: zero (added layers get zero attention-output and FFN-down weights)"
            )?;
        }
        if self.unequal_groups {
            writeln!(
                f,
                "warning: unequal groups; the result is not function preserving"
            )?;
        }
        writeln!(f, "tensors: {}", self.tensors.len())?;
        for t in &self.tensors {
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            write!(
                f,
                "{} {}[{}] <- ",
                t.name,
                crate::dtype::name(t.dtype),
                shape.join(", ")
            )?;
            if let ([single], DepthOp::Zero) = (t.sources.as_slice(), t.depth) {
                write!(f, "zeros (added layer, instead of {single})")?;
            } else if let [single] = t.sources.as_slice() {
                write!(f, "{single}")?;
            } else {
                write!(
                    f,
                    "{}({})",
                    match t.depth {
                        DepthOp::Mean => "mean",
                        _ => "first",
                    },
                    t.sources.join(", ")
                )?;
            }
            let ops: Vec<String> = t
                .axes
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    a.op.map(|op| format!("{i}:{} {} {}->{}", a.axis, op.name(), a.from, a.to))
                })
                .collect();
            if !ops.is_empty() {
                write!(f, " | {}", ops.join("; "))?;
            }
            if let (Some(with), Operator::Interpolate { alpha } | Operator::Grow { alpha }) =
                (&t.interpolate_with, self.operator)
            {
                write!(f, " | lerp({alpha}) with large {with}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
