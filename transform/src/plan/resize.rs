//! Planning coalescing and de-coalescing: the sizes on both sides, the head and layer groups,
//! the element-level groupings of each space, and one entry per output tensor.

use std::collections::BTreeMap;

use super::{
    AxisPlan, DepthInit, DepthOp, Operator, Plan, RESIDUAL_OUTPUT_ROLES, SpaceMaps, Target,
    TensorPlan, natural_key,
};
use crate::anatomy::{Anatomy, Dims};
use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::{Axis, Placement, Space};
use crate::scheme::{Grouping, MAX_UNITS, SchemeSpec};

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
                    "{heads_other} heads cannot keep {ratio} query heads per key/value head; give the key/value heads"
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
            "`similar` chooses groups from the large model's weights, and de-coalescing reads only the small model: grow with the saved large model (the groups are recomputed from it), or give the groups coalescing chose (the `{line}:` line of its plan) as JSON"
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
