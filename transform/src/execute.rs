//! Executing a plan: compute one output tensor at a time from memory-mapped inputs.

use crate::error::{Error, Result};
use crate::ops::{self, GatherError};
use crate::plan::{DepthOp, Operator, Plan, TensorPlan};
use crate::read::Checkpoint;

/// The checkpoints a plan reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The checkpoint the plan's `sources` name (the small one for grow, the other one for
    /// interpolate).
    pub primary: &'a Checkpoint,
    /// The saved large model (interpolate and grow).
    pub large: Option<&'a Checkpoint>,
}

/// Computes the bytes of one planned output tensor.
pub fn compute(plan: &Plan, tensor: &TensorPlan, inputs: Inputs<'_>) -> Result<Vec<u8>> {
    let missing = |name: &str, ckpt: &Checkpoint| Error::MissingTensor {
        path: ckpt.path().to_path_buf(),
        tensor: name.to_string(),
        arch: plan.arch.clone(),
    };
    let Some(first) = tensor.sources.first() else {
        return Err(Error::BadAxis {
            tensor: tensor.name.clone(),
            axis: 0,
            shape: tensor.shape.clone(),
            reason: "the plan gives it no source tensor".into(),
        });
    };
    if !crate::dtype::is_float(tensor.dtype) {
        let bytes = inputs
            .primary
            .bytes(first)
            .ok_or_else(|| missing(first, inputs.primary))?;
        if let (Some(with), Some(large)) = (&tensor.interpolate_with, inputs.large) {
            let large_bytes = large.bytes(with).ok_or_else(|| missing(with, large))?;
            if large_bytes != bytes {
                return Err(Error::Incompatible {
                    tensor: tensor.name.clone(),
                    reason: "a non-float tensor differs between the two checkpoints".into(),
                });
            }
        }
        return Ok(bytes.to_vec());
    }

    let mut data = if tensor.depth == DepthOp::Zero {
        vec![0.0; tensor.shape.iter().product()]
    } else {
        resized(plan, tensor, inputs.primary, first)?
    };
    if let (Some(with), Some(large), Operator::Interpolate { alpha } | Operator::Grow { alpha }) =
        (&tensor.interpolate_with, inputs.large, plan.operator)
    {
        let large_values = large.values(with)?;
        if large_values.len() != data.len() {
            return Err(Error::Incompatible {
                tensor: tensor.name.clone(),
                reason: format!(
                    "{} values in {} but {} computed",
                    large_values.len(),
                    large.path().display(),
                    data.len()
                ),
            });
        }
        data = ops::interpolate(&large_values, &data, alpha);
    }
    crate::dtype::encode(tensor.dtype, &data).ok_or(Error::UnsupportedDtype {
        tensor: tensor.name.clone(),
        dtype: tensor.dtype,
    })
}

/// The values of a float output tensor before interpolation: its sources' depth operation,
/// then the gather of each transformed axis.
fn resized(
    plan: &Plan,
    tensor: &TensorPlan,
    primary: &Checkpoint,
    first: &str,
) -> Result<Vec<f64>> {
    let layers = tensor
        .sources
        .iter()
        .map(|s| primary.values(s))
        .collect::<Result<Vec<_>>>()?;
    let mut data = match tensor.depth {
        DepthOp::Mean => ops::mean_of(&layers),
        DepthOp::Single | DepthOp::First | DepthOp::Zero => {
            layers.into_iter().next().unwrap_or_default()
        }
    };
    let mut shape = primary
        .info(first)
        .map(|i| i.shape.clone())
        .unwrap_or_default();
    for (axis, (axis_plan, rule_axis)) in tensor.axes.iter().zip(&tensor.rule_axes).enumerate() {
        if axis_plan.op.is_none() {
            continue;
        }
        let Some(gather) = plan.gather_for(rule_axis) else {
            continue;
        };
        if shape.get(axis) != Some(&gather.input_len()) {
            return Err(Error::BadAxis {
                tensor: first.to_string(),
                axis,
                shape: shape.clone(),
                reason: format!("expected size {} for `{rule_axis}`", gather.input_len()),
            });
        }
        data = match gather.apply(&data, &shape, axis) {
            Ok(out) => out,
            Err(GatherError::Shape) => {
                return Err(Error::BadAxis {
                    tensor: first.to_string(),
                    axis,
                    shape: shape.clone(),
                    reason: format!(
                        "{} values do not fill the shape for `{rule_axis}`",
                        data.len()
                    ),
                });
            }
            Err(GatherError::OutOfMemory(bytes)) => {
                return Err(Error::OutOfMemory {
                    tensor: tensor.name.clone(),
                    bytes,
                });
            }
        };
        if let Some(size) = shape.get_mut(axis) {
            *size = gather.output_len();
        }
    }
    if shape != tensor.shape {
        return Err(Error::BadAxis {
            tensor: tensor.name.clone(),
            axis: 0,
            shape,
            reason: format!("planned shape {:?} was not produced", tensor.shape),
        });
    }
    Ok(data)
}
