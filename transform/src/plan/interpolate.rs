//! Planning interpolation between two checkpoints, and the interpolation weights accepted.

use super::{DepthOp, Operator, Plan, TensorPlan, natural_key};
use crate::error::{Error, Result};
use crate::read::Checkpoint;

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
            reason: "it must lie in [0, 1] unless extrapolation beyond the checkpoints is allowed",
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
