//! Byte-level language-modelling data: a text cut into windows of `seq + 1` bytes, batched into
//! inputs and next-byte targets. Enough for the example and the tests; any Burn data pipeline
//! that yields [`LmBatch`] works with [`crate::Gpt2`].
//!
//! ```
//! use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
//! use vcycle_plugin::data::{ByteWindows, LmBatcher, split_train_valid};
//!
//! let text = b"fn main() { println!(\"hello\"); }\n".repeat(64);
//! // Every 10th block of 128 bytes is held out for validation.
//! let (train, valid) = split_train_valid(&text, 10, 128);
//! assert_eq!(train.len() + valid.len(), text.len());
//! // Windows of 33 bytes every 32: 32 inputs and their 32 next bytes.
//! let windows = ByteWindows::new(train, 32, 32);
//! let loader = DataLoaderBuilder::new(LmBatcher).batch_size(8).shuffle(1).build(windows);
//! let batch = loader.iter().next().expect("a batch").expect("eight windows");
//! assert_eq!(batch.inputs.dims(), [8, 32]);
//! assert_eq!(batch.targets.dims(), [8, 32]);
//! ```

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::SequenceOutput;

use crate::cycle::flops::SequenceBatch;

/// The vocabulary of the byte-level tokenizer.
pub const BYTE_VOCAB: usize = 256;

/// A batch for next-token prediction.
#[derive(Clone, Debug)]
pub struct LmBatch {
    /// Token ids `[batch, seq]`.
    pub inputs: Tensor<2, Int>,
    /// The next token of each input position `[batch, seq]`.
    pub targets: Tensor<2, Int>,
}

/// Windows of `seq + 1` consecutive bytes of a text, starting every `stride` bytes.
#[derive(Clone, Debug)]
pub struct ByteWindows {
    bytes: Arc<Vec<u8>>,
    seq: usize,
    stride: usize,
    len: usize,
}

impl ByteWindows {
    /// All windows of `seq + 1` bytes of `bytes` that start at a multiple of `stride`.
    pub fn new(bytes: Vec<u8>, seq: usize, stride: usize) -> Self {
        let stride = stride.max(1);
        let len = match bytes.len().checked_sub(seq + 1) {
            Some(room) => room / stride + 1,
            None => 0,
        };
        ByteWindows {
            bytes: Arc::new(bytes),
            seq,
            stride,
            len,
        }
    }

    /// Tokens per window fed to the model (the window holds one more: the last target).
    pub fn seq(&self) -> usize {
        self.seq
    }
}

impl Dataset<Vec<i64>> for ByteWindows {
    fn get(&self, index: usize) -> Result<Vec<i64>, DatasetError> {
        let start = index * self.stride;
        self.bytes
            .get(start..start + self.seq + 1)
            .filter(|_| index < self.len)
            .map(|w| w.iter().map(|&b| i64::from(b)).collect())
            .ok_or_else(|| {
                DatasetError::new(std::io::Error::other(format!(
                    "window {index} is out of range ({} windows)",
                    self.len
                )))
            })
    }

    fn len(&self) -> usize {
        self.len
    }
}

/// Splits a text into training and validation bytes: it is cut into blocks of `block` bytes,
/// and the last block of every run of `every` goes to validation (1 in `every`, spread over
/// the whole text), the rest to training.
pub fn split_train_valid(bytes: &[u8], every: usize, block: usize) -> (Vec<u8>, Vec<u8>) {
    let (every, block) = (every.max(2), block.max(1));
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, chunk) in bytes.chunks(block).enumerate() {
        if i % every == every - 1 {
            valid.extend_from_slice(chunk);
        } else {
            train.extend_from_slice(chunk);
        }
    }
    (train, valid)
}

/// Batches windows of `seq + 1` tokens into [`LmBatch`]es.
#[derive(Clone, Debug, Default)]
pub struct LmBatcher;

impl Batcher<Vec<i64>, LmBatch> for LmBatcher {
    fn batch(&self, items: Vec<Vec<i64>>, device: &Device) -> LmBatch {
        let batch = items.len();
        let seq = items.first().map_or(0, |w| w.len().saturating_sub(1));
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        for window in &items {
            inputs.extend_from_slice(&window[..seq]);
            targets.extend_from_slice(&window[1..=seq]);
        }
        LmBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [batch, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [batch, seq]), device),
        }
    }
}

/// The mean next-token cross-entropy of `logits` `[batch, seq, vocab]` against `targets`
/// `[batch, seq]`, with the logits, as Burn's learner reports a step.
pub fn next_token_output(logits: Tensor<3>, targets: Tensor<2, Int>) -> SequenceOutput {
    let [b, s, v] = logits.dims();
    let loss = CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(
            logits.clone().reshape([b * s, v]),
            targets.clone().reshape([b * s]),
        );
    SequenceOutput::new(loss, logits, None, targets)
}

/// A batch for masked-language modelling.
#[derive(Clone, Debug)]
pub struct MlmBatch {
    /// Token ids `[batch, seq]`, some replaced (mask token, random byte).
    pub inputs: Tensor<2, Int>,
    /// The original ids `[batch, seq]`.
    pub targets: Tensor<2, Int>,
    /// 1 where the loss counts (the chosen positions), 0 elsewhere `[batch, seq]`.
    pub weights: Tensor<2>,
}

/// BERT-style masking of byte windows (the first `seq` bytes of each item): each position is
/// chosen with probability `prob`; a chosen input becomes `mask_token` (80 %), a random byte
/// (10 %) or stays (10 %). Deterministic: a seeded generator advanced by every batch.
#[derive(Debug)]
pub struct MlmBatcher {
    mask_token: i64,
    prob: f64,
    state: std::sync::atomic::AtomicU64,
    fixed: bool,
}

impl MlmBatcher {
    /// Masks with `mask_token` (e.g. [`BYTE_VOCAB`] for a vocabulary of 257).
    pub fn new(mask_token: i64, prob: f64, seed: u64) -> Self {
        MlmBatcher {
            mask_token,
            prob,
            state: std::sync::atomic::AtomicU64::new(seed | 1),
            fixed: false,
        }
    }

    /// Masks that depend on the seed and the batch's contents only, not on the batches before:
    /// every pass over a validation set masks the same positions, so its losses compare.
    pub fn with_fixed_masks(mut self) -> Self {
        self.fixed = true;
        self
    }
}

/// splitmix64.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Batcher<Vec<i64>, MlmBatch> for MlmBatcher {
    fn batch(&self, items: Vec<Vec<i64>>, device: &Device) -> MlmBatch {
        use std::sync::atomic::Ordering;
        let mut rng = if self.fixed {
            let mut hash = self.state.load(Ordering::Relaxed);
            for &token in items.iter().flatten() {
                let mut mixed = hash ^ token as u64;
                hash = next_random(&mut mixed);
            }
            hash
        } else {
            self.state
                .fetch_add(0x2545_F491_4F6C_DD1D, Ordering::Relaxed)
        };
        let uniform = |rng: &mut u64| (next_random(rng) >> 11) as f64 / (1u64 << 53) as f64;
        let batch = items.len();
        let seq = items.first().map_or(0, |w| w.len().saturating_sub(1));
        let mut inputs = Vec::with_capacity(batch * seq);
        let mut targets = Vec::with_capacity(batch * seq);
        let mut weights = Vec::with_capacity(batch * seq);
        for window in &items {
            for &token in &window[..seq] {
                targets.push(token);
                if uniform(&mut rng) < self.prob {
                    weights.push(1.0f32);
                    let r = uniform(&mut rng);
                    inputs.push(if r < 0.8 {
                        self.mask_token
                    } else if r < 0.9 {
                        (next_random(&mut rng) % BYTE_VOCAB as u64) as i64
                    } else {
                        token
                    });
                } else {
                    weights.push(0.0);
                    inputs.push(token);
                }
            }
        }
        MlmBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [batch, seq]), device),
            targets: Tensor::from_data(TensorData::new(targets, [batch, seq]), device),
            weights: Tensor::from_data(TensorData::new(weights, [batch, seq]), device),
        }
    }
}

impl SequenceBatch for LmBatch {
    fn shape(&self) -> [usize; 2] {
        self.inputs.dims()
    }
}

impl SequenceBatch for MlmBatch {
    fn shape(&self) -> [usize; 2] {
        self.inputs.dims()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(batcher: &MlmBatcher, items: &[Vec<i64>]) -> Vec<i64> {
        let batch = batcher.batch(items.to_vec(), &Device::flex());
        batch.inputs.into_data().iter::<i64>().collect()
    }

    #[test]
    fn fixed_masks_repeat_over_passes_and_masks_cover_about_the_share() {
        let items: Vec<Vec<i64>> = (0..64)
            .map(|i| (0..65).map(|j| (i * 7 + j * 3) % 200).collect())
            .collect();
        let fixed = MlmBatcher::new(BYTE_VOCAB as i64, 0.15, 3).with_fixed_masks();
        let first = inputs(&fixed, &items);
        assert_eq!(first, inputs(&fixed, &items));
        let moving = MlmBatcher::new(BYTE_VOCAB as i64, 0.15, 3);
        assert_ne!(inputs(&moving, &items), inputs(&moving, &items));
        let masked = first.iter().filter(|&&t| t == BYTE_VOCAB as i64).count() as f64;
        // 15% chosen, 80% of those masked: 12% of 4,096 positions, about 492.
        assert!((masked / 4096.0 - 0.12).abs() < 0.02, "{masked}");
    }
}
