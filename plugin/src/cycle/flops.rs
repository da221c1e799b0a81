//! The default training-FLOP count, from a model's sizes and the tensors its rules claim.

use std::sync::Arc;

use burn::train::TrainStep;

use crate::checkpoint::resizable::Resizable;
use crate::cycle::FlopCounter;
use crate::error::Result;

/// A batch of `[batch, seq]` token sequences, as [`sequence_flop_counter`] needs to know it.
///
/// ```
/// use burn::tensor::{Device, Int, Tensor};
/// use vcycle_plugin::data::LmBatch;
/// use vcycle_plugin::SequenceBatch;
///
/// let ids = Tensor::<2, Int>::zeros([4, 16], &Device::flex());
/// let batch = LmBatch { inputs: ids.clone(), targets: ids };
/// assert_eq!(batch.shape(), [4, 16]);
/// ```
pub trait SequenceBatch {
    /// `[batch, seq]`.
    fn shape(&self) -> [usize; 2];
}

/// Training FLOPs (forward + backward) of `model` on one batch of `batch` sequences of `seq`
/// tokens:
///
/// `3 · batch · seq · (2·W + 4·layers·seq·attn)`
///
/// where `W` is the model's matrix-product weights (every 2-D tensor its rules claim that is
/// not an embedding, plus a tied output head), `4·layers·seq·attn` the attention scores and
/// weighted sums per token (every key counted: a causal mask is not discounted), ×2 for
/// multiply-add and ×3 for forward + backward. Biases, norms, softmax and embedding look-ups
/// are left out (the usual `6·N·tokens` approximation plus the attention term).
///
/// ```
/// use burn::tensor::Device;
/// use vcycle_plugin::{Gpt2Config, train_flops};
///
/// let model = Gpt2Config::new(256, 32, 32, 2, 4, 64).init(&Device::flex())?;
/// // W = 2·(4·32² + 2·32·64) + 32·256 (the tied head)
/// let w = 2.0 * (4.0 * 32.0 * 32.0 + 2.0 * 32.0 * 64.0) + 32.0 * 256.0;
/// let expected = 3.0 * 4.0 * 16.0 * (2.0 * w + 4.0 * 2.0 * 16.0 * 32.0);
/// assert_eq!(train_flops(&model, 4, 16)?, expected);
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
pub fn train_flops<M: Resizable>(model: &M, batch: usize, seq: usize) -> Result<f64> {
    Ok(PerToken::of(model)?.train_flops(batch, seq))
}

/// A [`VCycleModel::flop_counter`](crate::VCycleModel::flop_counter) for a model trained on
/// batches of token sequences: [`train_flops`] at each batch's shape.
pub fn sequence_flop_counter<M>(model: &M) -> Result<FlopCounter<<M as TrainStep>::Input>>
where
    M: Resizable + TrainStep<Input: SequenceBatch>,
{
    let per_token = PerToken::of(model)?;
    Ok(Arc::new(move |batch: &<M as TrainStep>::Input| {
        let [b, s] = batch.shape();
        per_token.train_flops(b, s)
    }))
}

/// What the count needs of a model.
struct PerToken {
    /// Multiply-adds of the matrix products.
    weights: f64,
    /// layers · attention width.
    attention: f64,
}

impl PerToken {
    fn of<M: Resizable>(model: &M) -> Result<PerToken> {
        let sizes = model.sizes();
        let weights = model.layout()?.matmul_weights(model, &sizes)?;
        Ok(PerToken {
            weights: weights as f64,
            attention: (sizes.dims.layers * sizes.attn()) as f64,
        })
    }

    fn train_flops(&self, batch: usize, seq: usize) -> f64 {
        let seq = seq as f64;
        3.0 * batch as f64 * seq * (2.0 * self.weights + 4.0 * seq * self.attention)
    }
}
