//! Planning the V-cycle's way up: de-coalescing, then interpolating with the saved large model.

use super::interpolate::check_alpha_in;
use super::resize::plan_resize;
use super::{AlphaRange, Operator, Plan, Target};
use crate::anatomy::Anatomy;
use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::scheme::SchemeSpec;

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
