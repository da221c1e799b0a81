//! Burn's training and inference steps for a model with one forward pass.

/// Burn's `TrainStep` and `InferenceStep` for a model whose method `$forward(batch)` returns
/// a `burn::train::SequenceOutput` (the loss and the logits) for a batch of type `$batch`:
/// training back-propagates the loss.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::loss::CrossEntropyLossConfig;
/// use burn::nn::{Embedding, Linear};
/// use burn::train::SequenceOutput;
/// use vcycle_plugin::data::LmBatch;
///
/// /// A bigram model: each byte's embedding predicts the next byte.
/// #[derive(Module, Debug)]
/// pub struct Bigram {
///     embed: Embedding,
///     out: Linear,
/// }
///
/// impl Bigram {
///     fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
///         let logits = self.out.forward(self.embed.forward(batch.inputs));
///         let [b, s, v] = logits.dims();
///         let loss = CrossEntropyLossConfig::new()
///             .init(&logits.device())
///             .forward(logits.clone().reshape([b * s, v]), batch.targets.clone().reshape([b * s]));
///         SequenceOutput::new(loss, logits, None, batch.targets)
///     }
/// }
///
/// vcycle_plugin::sequence_steps!(Bigram, LmBatch, forward_lm);
/// ```
///
/// ([`Gpt2`](crate::Gpt2) and `plugin/examples/custom_model.rs` use it.)
#[macro_export]
macro_rules! sequence_steps {
    ($model:ty, $batch:ty, $forward:ident) => {
        impl ::burn::train::TrainStep for $model {
            type Input = $batch;
            type Output = ::burn::train::SequenceOutput;

            fn step(&self, batch: $batch) -> ::burn::train::TrainOutput<Self::Output> {
                let out = self.$forward(batch);
                ::burn::train::TrainOutput::new(self, out.loss.backward(), out)
            }
        }

        impl ::burn::train::InferenceStep for $model {
            type Input = $batch;
            type Output = ::burn::train::SequenceOutput;

            fn step(&self, batch: $batch) -> Self::Output {
                self.$forward(batch)
            }
        }
    };
}
