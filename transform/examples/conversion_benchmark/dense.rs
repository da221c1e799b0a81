//! The reference the streaming executor is compared with: the same operator on the largest
//! tensors written as dense matrix products (ndarray, f32), timed on one thread against the
//! executor.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use ndarray::Array2;
use serde_json::{Value, json};
use vcycle_transform::execute::{self, Executor, Inputs};
use vcycle_transform::ops::Gather;
use vcycle_transform::plan::{DepthOp, TensorPlan};
use vcycle_transform::{Checkpoint, Operator, dtype};

use crate::conversion::job;

/// The operator on the largest tensors (the largest transformed 2-D tensor, and the largest
/// whose both axes change), timed two ways on one thread each: the streaming executor, and
/// the same operator as dense matrix products, small = M₀·W·M₁ᵀ with averaging, summing,
/// duplicating or splitting matrices M (ndarray `dot` in f32, after the same decoding).
pub fn dense_comparison(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Value> {
    let job = job(op, inputs, small)?;
    let plan = job.plan();
    let checkpoints = inputs
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(primary) = checkpoints.first() else {
        bail!("no input");
    };
    let exec_inputs = Inputs {
        primary,
        large: checkpoints.get(1),
    };
    let executor = execute::Executor::new(plan);
    let changed = |t: &&TensorPlan, both: bool| {
        let gathered = executor
            .axis_gathers(t)
            .iter()
            .filter(|g| g.is_some())
            .count();
        t.shape.len() == 2 && if both { gathered == 2 } else { gathered > 0 }
    };
    let bytes = |t: &&TensorPlan| t.shape.iter().product::<usize>();
    let mut chosen: Vec<&TensorPlan> = Vec::new();
    for both in [false, true] {
        let largest = plan
            .tensors
            .iter()
            .filter(|t| changed(t, both))
            .max_by_key(bytes);
        if let Some(t) = largest
            && !chosen.iter().any(|c| c.name == t.name)
        {
            chosen.push(t);
        }
    }
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (mut streaming, mut dense_s) = (0.0, 0.0);
    for t in &chosen {
        let start = Instant::now();
        let mut streamed = Vec::new();
        one_thread.install(|| {
            executor.stream(t, exec_inputs, &mut |b| {
                streamed.extend_from_slice(b.bytes());
                Ok(())
            })
        })?;
        streaming += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let product = dense(&executor, t, exec_inputs)?;
        dense_s += start.elapsed().as_secs_f64();
        if product.len() != streamed.len() {
            bail!(
                "dense {} has {} bytes, streamed {}",
                t.name,
                product.len(),
                streamed.len()
            );
        }
    }
    Ok(json!({
        "tensors": chosen.iter().map(|t| format!("{} {:?}", t.name, t.shape)).collect::<Vec<_>>(),
        "streaming_s": streaming,
        "dense_s": dense_s,
        "dense_ratio": dense_s / streaming,
    }))
}

/// One tensor by dense matrix products.
fn dense(executor: &Executor<'_>, t: &TensorPlan, inputs: Inputs<'_>) -> Result<Vec<u8>> {
    let plan = executor.plan();
    let matrix = |name: &str, checkpoint: &Checkpoint| -> Result<Array2<f32>> {
        let info = checkpoint.info(name).context("no such tensor")?;
        let values = checkpoint
            .bytes(name)
            .and_then(|b| dtype::decode(info.dtype, b))
            .context("not a float tensor")?;
        let [rows, cols] = info.shape[..] else {
            bail!("{name} is not 2-D");
        };
        Ok(Array2::from_shape_vec(
            (rows, cols),
            values.iter().map(|&v| v as f32).collect(),
        )?)
    };
    let sources = match t.depth {
        DepthOp::Mean => t.sources.as_slice(),
        _ => t.sources.get(..1).unwrap_or_default(),
    };
    let mut w: Option<Array2<f32>> = None;
    for name in sources {
        let m = matrix(name, inputs.primary)?;
        w = Some(match w {
            Some(sum) => sum + m,
            None => m,
        });
    }
    let mut w = w.context("no source")? / sources.len() as f32;
    let gathers = executor.axis_gathers(t);
    let operator = |g: &Gather| {
        let mut m = Array2::<f32>::zeros((g.output_len(), g.input_len()));
        for i in 0..g.output_len() {
            if let Some((sources, divisor)) = g.source(i) {
                for &j in sources {
                    m[[i, j]] += 1.0 / divisor as f32;
                }
            }
        }
        m
    };
    if let Some(Some(g)) = gathers.first() {
        w = operator(&g.gather).dot(&w);
    }
    if let Some(Some(g)) = gathers.get(1) {
        w = w.dot(&operator(&g.gather).t());
    }
    if let (Some(with), Some(large), Operator::Grow { alpha } | Operator::Interpolate { alpha }) =
        (&t.interpolate_with, inputs.large, plan.operator)
    {
        let alpha = alpha as f32;
        w = matrix(with, large)? * (1.0 - alpha) + w * alpha;
    }
    let values: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    dtype::encode(t.dtype, &values).context("not a float dtype")
}
