//! Function checks: build a [`forward::Model`] from a checkpoint through its rules (roles and
//! axis directions, never tensor names), run two models on the same seeded input and compare.
//!
//! This file runs and compares models; the weights are loaded in `loader.rs` and the inputs
//! drawn in `input.rs`.

use ndarray::{Array2, ArrayD};

use crate::anatomy::Anatomy;
use crate::error::{Error, Result};
use crate::forward::{self, Input, Positions};
use crate::read::Checkpoint;

mod input;
mod loader;

use input::{InputKind, random_input};
pub use input::{ModelInput, random_normal, random_tokens};
pub use loader::Loader;

/// Runs a checkpoint on an input.
pub fn run(checkpoint: &Checkpoint, anatomy: &Anatomy, input: Input<'_>) -> Result<ArrayD<f32>> {
    let model = Loader::new(checkpoint, anatomy)?.model()?;
    Ok(forward::forward(&model, input)?)
}

/// Runs a checkpoint on token ids.
pub fn run_tokens(
    checkpoint: &Checkpoint,
    anatomy: &Anatomy,
    ids: &Array2<i64>,
) -> Result<ArrayD<f32>> {
    run(checkpoint, anatomy, Input::Tokens(ids.view()))
}

/// How far apart two models' outputs are.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Difference {
    /// mean |a − b|.
    pub mean_abs: f64,
    /// max |a − b|.
    pub max_abs: f64,
    /// mean |a − b| / mean |a|.
    pub relative: f64,
    /// mean |a|, the reference's scale.
    pub mean_abs_reference: f64,
}

/// Compares `b` against the reference `a`.
pub fn compare(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Result<Difference> {
    if a.shape() != b.shape() {
        return Err(Error::OutputShapes {
            reference: a.shape().to_vec(),
            other: b.shape().to_vec(),
        });
    }
    let n = a.len().max(1) as f64;
    let mut sum_abs = 0.0;
    let mut max_abs: f64 = 0.0;
    let mut sum_ref = 0.0;
    for (x, y) in a.iter().zip(b.iter()) {
        let d = (f64::from(*x) - f64::from(*y)).abs();
        sum_abs += d;
        max_abs = max_abs.max(d);
        sum_ref += f64::from(*x).abs();
    }
    let mean_abs_reference = sum_ref / n;
    Ok(Difference {
        mean_abs: sum_abs / n,
        max_abs,
        relative: if mean_abs_reference > 0.0 {
            sum_abs / n / mean_abs_reference
        } else if sum_abs > 0.0 {
            // Any difference from an all-zero reference is infinitely large relative to it.
            f64::INFINITY
        } else {
            0.0
        },
        mean_abs_reference,
    })
}

/// What `vcycle verify` measures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    /// Sequences (or images) in the batch.
    pub batch: usize,
    /// Tokens per sequence (token models; image models read whole images).
    pub seq: usize,
    /// The seed of the random input.
    pub seed: u64,
    /// What the models read, e.g. `2 x 16 random tokens, seed 0`.
    pub input: String,
    /// How far the two models' outputs are apart.
    pub difference: Difference,
}

/// Runs both checkpoints on the same seeded random input and compares their outputs (the
/// first is the reference). Their sizes may differ; their inputs must agree: the same
/// vocabulary, or the same image channels and size.
pub fn verify(
    a: (&Checkpoint, &Anatomy),
    b: (&Checkpoint, &Anatomy),
    seed: u64,
    batch: usize,
    seq: usize,
) -> Result<Verification> {
    let (la, lb) = (Loader::new(a.0, a.1)?, Loader::new(b.0, b.1)?);
    let (ma, mb) = (la.model()?, lb.model()?);
    let (ka, kb) = (la.input_kind(&ma)?, lb.input_kind(&mb)?);
    if ka != kb {
        let describe = |k: InputKind| match k {
            InputKind::Tokens { vocab } => format!("tokens of a {vocab}-token vocabulary"),
            InputKind::Pixels { channels, side } => {
                format!("{channels}-channel {side}x{side} images")
            }
        };
        return Err(lb.unrunnable(format!(
            "it reads {}, but {} reads {}",
            describe(kb),
            a.0.path().display(),
            describe(ka)
        )));
    }
    for (loader, model) in [(&la, &ma), (&lb, &mb)] {
        check_input_size(loader, model, ka, batch, seq)?;
    }
    let input =
        random_input(ka, seed, batch, seq).ok_or_else(|| la.unrunnable("it has no vocabulary"))?;
    let out_a = forward::forward(&ma, input.view())?;
    let out_b = forward::forward(&mb, input.view())?;
    for (checkpoint, out) in [(a.0, &out_a), (b.0, &out_b)] {
        require_finite(checkpoint, out)?;
    }
    Ok(Verification {
        batch,
        seq,
        seed,
        input: input.describe(seed),
        difference: compare(&out_a, &out_b)?,
    })
}

/// The most values one activation of a [`verify`] run may hold (1 GiB of f32): batch and
/// sequence length are bounded up front, before anything is allocated.
pub const MAX_ACTIVATION_VALUES: usize = 1 << 28;

/// Refuses a batch and sequence length the model cannot read (more tokens than its learned
/// positions) or whose largest activation (hidden, FFN, logits or attention scores) would
/// exceed [`MAX_ACTIVATION_VALUES`].
fn check_input_size(
    loader: &Loader<'_>,
    model: &forward::Model,
    kind: InputKind,
    batch: usize,
    seq: usize,
) -> Result<()> {
    let positions = match &model.positions {
        Positions::Learned(table) => Some(table.nrows()),
        Positions::Rope { .. } | Positions::None => None,
    };
    let (tokens, vocab) = match kind {
        InputKind::Tokens { vocab } => (seq, vocab),
        InputKind::Pixels { .. } => (positions.unwrap_or(1), 0),
    };
    if batch == 0 || tokens == 0 {
        return Err(loader.unrunnable("the batch and the sequence need at least one token"));
    }
    if let (InputKind::Tokens { .. }, Some(positions)) = (kind, positions)
        && seq > positions
    {
        return Err(loader.unrunnable(format!(
            "a sequence of {seq} tokens is longer than its {positions} learned positions"
        )));
    }
    let d = &loader.anatomy.dims;
    let width = [d.hidden, d.ffn, vocab, d.heads.saturating_mul(tokens)]
        .into_iter()
        .max()
        .unwrap_or(0);
    let values = batch
        .checked_mul(tokens)
        .and_then(|n| n.checked_mul(width.max(1)));
    match values {
        Some(v) if v <= MAX_ACTIVATION_VALUES => Ok(()),
        _ => Err(loader.unrunnable(format!(
            "a batch of {batch} x {tokens} tokens would need activations of more than {MAX_ACTIVATION_VALUES} values (a width of {width}); use a smaller batch or fewer tokens"
        ))),
    }
}

/// Refuses outputs holding NaN or infinite values: no difference to them means anything.
fn require_finite(checkpoint: &Checkpoint, out: &ArrayD<f32>) -> Result<()> {
    let mut bad = out.iter().enumerate().filter(|(_, v)| !v.is_finite());
    let Some((first, _)) = bad.next() else {
        return Ok(());
    };
    let (nan, inf) = out.iter().fold((0, 0), |(nan, inf), v| {
        (
            nan + usize::from(v.is_nan()),
            inf + usize::from(v.is_infinite()),
        )
    });
    Err(Error::NonFiniteLogits {
        path: checkpoint.path().to_path_buf(),
        nan,
        inf,
        first,
    })
}

/// What [`decoalesce_difference`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegrowMeasurement {
    /// Query heads of the coalesced model.
    pub small_heads: usize,
    /// Layers of the coalesced model.
    pub small_layers: usize,
    /// How far the regrown model's outputs are from the original's.
    pub difference: Difference,
}

/// Coalesces `model` to `target`'s sizes, de-coalesces the result back to the model's own
/// sizes with the same scheme and rule, and compares the small model (reference) with the
/// regrown one. `work` must be an empty scratch directory.
pub fn decoalesce_difference(
    model: &std::path::Path,
    target: &crate::plan::Target,
    work: &std::path::Path,
    seed: u64,
) -> Result<RegrowMeasurement> {
    let options = crate::convert::Options {
        target: target.clone(),
        ..Default::default()
    };
    let (_, large_anatomy) = crate::convert::open_model(model, &options.arch)?;
    let small_path = work.join("small");
    crate::convert::Job::coalesce(model, &options)?.write(&small_path, false)?;
    let back = crate::convert::Options {
        target: crate::plan::Target {
            heads: Some(large_anatomy.dims.heads),
            kv_heads: Some(large_anatomy.dims.kv_heads),
            layers: Some(large_anatomy.dims.layers),
            ..target.clone()
        },
        ..Default::default()
    };
    let grown_path = work.join("grown");
    crate::convert::Job::decoalesce(&small_path, &back)?.write(&grown_path, false)?;
    let (small, small_anatomy) = crate::convert::open_model(&small_path, &back.arch)?;
    let (grown, grown_anatomy) = crate::convert::open_model(&grown_path, &back.arch)?;
    let v = verify(
        (&small, &small_anatomy),
        (&grown, &grown_anatomy),
        seed,
        2,
        16,
    )?;
    Ok(RegrowMeasurement {
        small_heads: small_anatomy.dims.heads,
        small_layers: small_anatomy.dims.layers,
        difference: v.difference,
    })
}

#[cfg(test)]
mod depth_init_tests;
#[cfg(test)]
mod hf_reference_tests;
#[cfg(test)]
mod preservation_tests;
#[cfg(test)]
mod similar_tests;
#[cfg(test)]
mod test_checkpoints;
