//! The sizes of a model: resolved from its tensors and config.json, and checked against every
//! axis of every claimed tensor.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::{Anatomy, META_HEAD_DIM, META_HEADS, META_KV_HEADS, META_TIED};
use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::{Axis, Space};
use crate::scheme::MAX_UNITS;

/// The sizes of a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dims {
    /// Transformer layers.
    pub layers: usize,
    /// Width of the residual stream (the `hidden` space).
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (= `heads` without grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the MLP (the `ffn` space).
    pub ffn: usize,
    /// Whether the output head is tied to the token embedding.
    pub tied: bool,
    /// Sizes of the fixed spaces (vocab, positions, ...).
    pub fixed: BTreeMap<String, usize>,
}

impl Dims {
    /// The size of a model space.
    pub fn space(&self, space: Space) -> usize {
        match space {
            Space::Hidden => self.hidden,
            Space::Attn => self.heads.saturating_mul(self.head_dim),
            Space::Kv => self.kv_heads.saturating_mul(self.head_dim),
            Space::Ffn => self.ffn,
        }
    }

    /// The size of an axis of a tensor in a model with these dims.
    pub fn axis(&self, axis: &Axis) -> Option<usize> {
        match axis {
            Axis::Fixed(name) => name.parse().ok().or_else(|| self.fixed.get(name).copied()),
            Axis::Model { parts, .. } => Some(
                parts
                    .iter()
                    .map(|&p| self.space(p))
                    .fold(0, usize::saturating_add),
            ),
        }
    }
}

/// The first of `keys` that config.json sets: `null` means not set, anything but a positive
/// integer is refused with the key named.
fn config_size(
    config: Option<&Value>,
    keys: &[String],
    path: &Path,
) -> Result<Option<(String, usize)>> {
    let Some((key, value)) = config.and_then(|c| {
        keys.iter()
            .find_map(|k| lookup(c, k).map(|v| (k.clone(), v)))
    }) else {
        return Ok(None);
    };
    match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
        _ if value.is_null() => Ok(None),
        Some(n) if n > 0 => Ok(Some((key, n))),
        _ => Err(Error::Config {
            path: path.to_path_buf(),
            reason: format!("`{key}` = {value} is not a size (a positive integer)"),
        }),
    }
}

/// Refuses a config.json value the rules read that is set but not a positive number
/// (`layer_norm_eps`, `rope_theta`).
fn check_positive(config: Option<&Value>, keys: &[String], path: &Path) -> Result<()> {
    let Some(config) = config else {
        return Ok(());
    };
    for key in keys {
        if let Some(value) = lookup(config, key)
            && !value.is_null()
            && !value.as_f64().is_some_and(|v| v > 0.0 && v.is_finite())
        {
            return Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!("`{key}` = {value} is not a positive number"),
            });
        }
    }
    Ok(())
}

/// Reads a possibly dotted key (`rope_parameters.rope_theta`).
pub fn lookup<'a>(config: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(config, |v, part| v.get(part))
}

pub(super) fn resolve_dims(checkpoint: &Checkpoint, anatomy: &Anatomy) -> Result<Dims> {
    let file_of = |name: &str| {
        checkpoint
            .file_of(name)
            .unwrap_or(checkpoint.path())
            .to_path_buf()
    };
    let rules = &anatomy.rules;
    let config = checkpoint.config();
    let config_path = checkpoint.config_path();

    // Layers: the layer indices present must be exactly 0..L.
    let mut indices: Vec<usize> = anatomy.claims.iter().filter_map(|c| c.layer).collect();
    indices.sort_unstable();
    indices.dedup();
    let layers = indices.len();
    if let Some(gap) = indices.iter().enumerate().find(|(i, l)| i != *l) {
        return Err(Error::InvalidCheckpoint {
            path: checkpoint.path().to_path_buf(),
            reason: format!("layer {} is missing (layers present: {:?})", gap.0, indices),
        });
    }

    // Observed sizes of single-part spaces and fixed spaces, consistent across tensors.
    let mut observed: BTreeMap<String, (usize, String, usize)> = BTreeMap::new();
    for c in &anatomy.claims {
        let (Some(rule), Some(info)) = (rules.tensors.get(c.rule), checkpoint.info(&c.name)) else {
            continue;
        };
        if info.shape.len() != rule.axes.len() {
            return Err(Error::RankMismatch {
                path: file_of(&c.name),
                tensor: c.name.clone(),
                shape: info.shape.clone(),
                rule: rule.template.clone(),
                rank: rule.axes.len(),
            });
        }
        for (axis_index, (axis, &size)) in rule.axes.iter().zip(&info.shape).enumerate() {
            let key = match axis {
                Axis::Fixed(name) => {
                    if let Ok(literal) = name.parse::<usize>() {
                        if literal != size {
                            return Err(Error::SpaceSizeMismatch {
                                tensor: c.name.clone(),
                                axis: axis_index,
                                shape: info.shape.clone(),
                                space: name.clone(),
                                expected: literal,
                                found: size,
                                origin: " (a literal size in the rule)".into(),
                            });
                        }
                        continue;
                    }
                    name.clone()
                }
                Axis::Model { parts, .. } => {
                    // A tensor with no elements could claim any size along a model axis; no
                    // real checkpoint has one, and trusting it could size tables by it.
                    if info.numel() == 0 {
                        return Err(Error::BadAxis {
                            tensor: c.name.clone(),
                            axis: axis_index,
                            shape: info.shape.clone(),
                            reason: "a tensor with a model axis cannot be empty".into(),
                        });
                    }
                    let Some(&first) = parts.first() else {
                        continue;
                    };
                    if parts.iter().any(|p| *p != first) {
                        continue;
                    }
                    if size % parts.len() != 0 {
                        return Err(Error::BadAxis {
                            tensor: c.name.clone(),
                            axis: axis_index,
                            shape: info.shape.clone(),
                            reason: format!(
                                "{size} does not split into {} equal parts",
                                parts.len()
                            ),
                        });
                    }
                    first.name().to_string()
                }
            };
            let part_size = match axis {
                Axis::Model { parts, .. } => size / parts.len(),
                Axis::Fixed(_) => size,
            };
            match observed.get(&key) {
                Some((expected, first_tensor, _)) if *expected != part_size => {
                    return Err(Error::SpaceSizeMismatch {
                        tensor: c.name.clone(),
                        axis: axis_index,
                        shape: info.shape.clone(),
                        space: key,
                        expected: *expected,
                        found: part_size,
                        origin: format!(" (from `{first_tensor}`)"),
                    });
                }
                Some(_) => {}
                None => {
                    observed.insert(key, (part_size, c.name.clone(), axis_index));
                }
            }
        }
    }
    let seen = |space: Space| observed.get(space.name()).map(|(n, _, _)| *n);

    let config_err = |reason: String| Error::Config {
        path: config_path.clone(),
        reason,
    };
    let check = |what: &str, keys: &[String], observed: Option<usize>| -> Result<Option<usize>> {
        match (config_size(config, keys, &config_path)?, observed) {
            (Some((key, c)), Some(o)) if c != o => Err(config_err(format!(
                "`{key}` = {c} disagrees with the tensors, whose {what} is {o}"
            ))),
            (Some((_, c)), _) => Ok(Some(c)),
            (_, o) => Ok(o),
        }
    };
    for (space, keys) in &rules.config.spaces {
        let observed = observed.get(space).map(|(n, _, _)| *n);
        check(&format!("`{space}` size"), keys, observed)?;
    }
    check("image size", &rules.config.image_size, None)?;
    check_positive(config, &rules.config.norm_eps, &config_path)?;
    check_positive(config, &rules.config.rope_theta, &config_path)?;

    let hidden = check("hidden size", &rules.config.hidden, seen(Space::Hidden))?;
    let ffn = check("FFN size", &rules.config.ffn, seen(Space::Ffn))?;
    let layer_count = check("layer count", &rules.config.layers, Some(layers))?;
    let meta = checkpoint.metadata();
    let meta_usize = |key: &str| meta.get(key).and_then(|v| v.parse::<usize>().ok());
    let heads = config_size(config, &rules.config.heads, &config_path)?
        .map(|(_, v)| v)
        .or_else(|| meta_usize(META_HEADS));
    let Some(heads) = heads.filter(|&h| h > 0) else {
        return Err(config_err(
            "the number of attention heads is unknown: use a model directory with config.json, or a file written by vcycle".into(),
        ));
    };
    if heads > MAX_UNITS {
        return Err(config_err(format!(
            "{heads} attention heads are more than the {MAX_UNITS} vcycle supports"
        )));
    }
    let attn = seen(Space::Attn);
    let head_dim = config_size(config, &rules.config.head_dim, &config_path)?
        .map(|(_, v)| v)
        .or_else(|| meta_usize(META_HEAD_DIM))
        .or_else(|| attn.map(|a| a / heads))
        .or_else(|| hidden.map(|h| h / heads))
        .unwrap_or(0);
    if let Some(attn) = attn
        && Some(attn) != heads.checked_mul(head_dim)
    {
        return Err(config_err(format!(
            "{heads} heads of size {head_dim} do not make the attention width {attn} found in the tensors"
        )));
    }
    let kv_heads = config_size(config, &rules.config.kv_heads, &config_path)?
        .map(|(_, v)| v)
        .or_else(|| meta_usize(META_KV_HEADS))
        .or_else(|| seen(Space::Kv).map(|kv| kv / head_dim.max(1)))
        .unwrap_or(heads);
    if let Some(kv) = seen(Space::Kv)
        && Some(kv) != kv_heads.checked_mul(head_dim)
    {
        return Err(config_err(format!(
            "{kv_heads} key/value heads of size {head_dim} do not make the key/value width {kv} found in the tensors"
        )));
    }
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(config_err(format!(
            "{heads} query heads are not a multiple of {kv_heads} key/value heads"
        )));
    }
    let hidden = hidden.unwrap_or(0);
    let ffn = ffn.unwrap_or(0);
    for (what, size) in [("hidden size", hidden), ("FFN size", ffn)] {
        if size % heads != 0 {
            return Err(config_err(format!(
                "the {what} {size} is not a multiple of the {heads} heads, so it cannot follow the head grouping"
            )));
        }
    }

    let head_present = anatomy
        .claims
        .iter()
        .any(|c| anatomy.rule_of(c).is_some_and(|r| r.tied_to.is_some()));
    let tied = rules
        .config
        .tie
        .as_ref()
        .and_then(|key| config.and_then(|c| lookup(c, key)))
        .and_then(Value::as_bool)
        .or_else(|| meta.get(META_TIED).map(|v| v == "true"))
        .unwrap_or(if head_present {
            false
        } else {
            rules.config.tie_default
        });

    let fixed = observed
        .iter()
        .filter(|(k, _)| Space::ALL.iter().all(|s| s.name() != k.as_str()))
        .map(|(k, (n, _, _))| (k.clone(), *n))
        .collect();

    let dims = Dims {
        layers: layer_count.unwrap_or(layers),
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn,
        tied,
        fixed,
    };

    // Every axis of every claimed tensor, fused ones included, has the size the model's
    // sizes give it; the plan relies on this.
    for c in &anatomy.claims {
        let (Some(rule), Some(info)) = (anatomy.rule_of(c), checkpoint.info(&c.name)) else {
            continue;
        };
        for (axis_index, (axis, &size)) in rule.axes.iter().zip(&info.shape).enumerate() {
            if let Some(expected) = dims.axis(axis)
                && expected != size
            {
                return Err(Error::SpaceSizeMismatch {
                    tensor: c.name.clone(),
                    axis: axis_index,
                    shape: info.shape.clone(),
                    space: axis.to_string(),
                    expected,
                    found: size,
                    origin: format!(
                        " ({heads} heads of {head_dim}, {kv_heads} key/value heads, hidden {hidden}, FFN {ffn})"
                    ),
                });
            }
        }
    }
    Ok(dims)
}

impl Space {
    pub const ALL: [Space; 4] = [Space::Hidden, Space::Attn, Space::Kv, Space::Ffn];
}
