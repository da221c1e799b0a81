//! A BERT masked-language-model encoder in Burn whose checkpoints are HuggingFace
//! `BertForMaskedLM` directories: `bert.embeddings.word_embeddings.weight`, …,
//! `bert.encoder.layer.{i}.attention.self.query.weight` (`torch.nn.Linear`, `[out, in]`), …,
//! `cls.predictions.transform.dense.weight`, `cls.predictions.bias`; the decoder is tied to the
//! word embeddings. Post-LN, GELU (erf), bidirectional attention, token type 0 everywhere.
//!
//! The names and layouts come from the `bert` preset's rules: its Linear weights are `[out, in]`,
//! so burn-store's PyTorch adapters transpose them (and rename `gamma`/`beta`); the model only
//! renames `layer_norm` → `LayerNorm` and `self_attn` → `self`.

use std::path::Path;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear,
};
use burn::tensor::{Device, Int, Tensor, activation};
use burn::train::SequenceOutput;
use serde_json::json;
use vcycle_transform::ArchChoice;

use crate::checkpoint::layout::CheckpointLayout;
use crate::checkpoint::resizable::Resizable;
use crate::checkpoint::sizes::Sizes;
use crate::cycle::flops::sequence_flop_counter;
use crate::cycle::{FlopCounter, VCycleModel};
use crate::data::text::MlmBatch;
use crate::error::{Error, Result};
use crate::models::attention::{attend, split_heads};
use crate::models::init::normal_linear;

/// The size of a [`Bert`] model.
#[derive(Config, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size (HF `vocab_size`).
    pub vocab: usize,
    /// Maximum sequence length (HF `max_position_embeddings`).
    pub positions: usize,
    /// Width (HF `hidden_size`).
    pub hidden: usize,
    /// Encoder layers (HF `num_hidden_layers`).
    pub layers: usize,
    /// Attention heads (HF `num_attention_heads`); must divide `hidden`.
    pub heads: usize,
    /// MLP width (HF `intermediate_size`).
    pub ffn: usize,
    /// Token types (HF `type_vocab_size`).
    #[config(default = 2)]
    pub token_types: usize,
    /// LayerNorm ε (HF `layer_norm_eps`).
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Dropout after embeddings and on each residual branch (HF `hidden_dropout_prob`).
    /// Attention probabilities are not dropped (HF `attention_probs_dropout_prob` is written
    /// as 0).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation (HF `initializer_range`).
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl BertConfig {
    /// A randomly initialised model (BERT's scheme: N(0, σ²) weights, zero biases, unit norms).
    pub fn init(&self, device: &Device) -> Result<Bert> {
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return Err(Error::Model {
                model: "BERT",
                message: format!(
                    "{} heads do not divide the width {}",
                    self.heads, self.hidden
                ),
            });
        }
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.init_std,
        };
        let linear = |d_in: usize, d_out: usize| normal_linear(d_in, d_out, self.init_std, device);
        let norm = || {
            LayerNormConfig::new(self.hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, self.hidden)
                .with_initializer(normal.clone())
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.dropout).init();
        let layer = (0..self.layers)
            .map(|_| BertLayer {
                attention: BertAttention {
                    self_attn: BertSelfAttention {
                        query: linear(self.hidden, self.hidden),
                        key: linear(self.hidden, self.hidden),
                        value: linear(self.hidden, self.hidden),
                        heads: self.heads,
                    },
                    output: BertResidual {
                        dense: linear(self.hidden, self.hidden),
                        layer_norm: norm(),
                        dropout: dropout(),
                    },
                },
                intermediate: BertIntermediate {
                    dense: linear(self.hidden, self.ffn),
                },
                output: BertResidual {
                    dense: linear(self.ffn, self.hidden),
                    layer_norm: norm(),
                    dropout: dropout(),
                },
            })
            .collect();
        Ok(Bert {
            embeddings: BertEmbeddings {
                word_embeddings: embedding(self.vocab),
                position_embeddings: embedding(self.positions),
                token_type_embeddings: embedding(self.token_types),
                layer_norm: norm(),
                dropout: dropout(),
            },
            encoder: BertEncoder { layer },
            cls: BertMlmHead {
                predictions: BertPredictions {
                    transform: BertTransform {
                        dense: linear(self.hidden, self.hidden),
                        layer_norm: norm(),
                    },
                    bias: Param::from_tensor(Tensor::zeros([self.vocab], device)),
                },
            },
            config: self.clone(),
        })
    }

    /// The sizes of a model of this configuration; the settings are those of a
    /// `BertForMaskedLM`'s `config.json` beyond its sizes, so `transformers` loads it.
    pub fn sizes(&self) -> Sizes {
        Sizes::new(self.layers, self.hidden, self.heads, self.ffn)
            .with_fixed("vocab", self.vocab)
            .with_fixed("positions", self.positions)
            .with_fixed("token_types", self.token_types)
            .with_norm_eps(self.layer_norm_eps)
            .with_setting("architectures", json!(["BertForMaskedLM"]))
            .with_setting("hidden_act", "gelu")
            .with_setting("vocab_size", self.vocab)
            .with_setting("max_position_embeddings", self.positions)
            .with_setting("type_vocab_size", self.token_types)
            .with_setting("pad_token_id", 0)
            .with_setting("attention_probs_dropout_prob", 0.0)
            .with_setting("hidden_dropout_prob", self.dropout)
            .with_setting("initializer_range", self.init_std)
            .with_setting("torch_dtype", "float32")
    }

    /// The configuration of a model of these sizes (`transformers`' defaults where the settings
    /// lack a value: ε = 1e-12, dropout 0.1, σ = 0.02).
    pub fn from_sizes(sizes: &Sizes) -> Result<Self> {
        let activation = sizes.settings.get("hidden_act").and_then(|v| v.as_str());
        if activation.is_some_and(|a| a != "gelu") {
            return Err(Error::Sizes(
                "BERT: only hidden_act = \"gelu\" (erf) is supported".into(),
            ));
        }
        if !sizes.dims.tied {
            return Err(Error::Sizes(
                "BERT: an untied decoder is not supported".into(),
            ));
        }
        Ok(BertConfig::new(
            sizes.fixed("vocab")?,
            sizes.fixed("positions")?,
            sizes.dims.hidden,
            sizes.dims.layers,
            sizes.dims.heads,
            sizes.dims.ffn,
        )
        .with_token_types(sizes.fixed("token_types")?)
        .with_layer_norm_eps(sizes.norm_eps.unwrap_or(1e-12))
        .with_dropout(sizes.setting_f64("hidden_dropout_prob", 0.1))
        .with_init_std(sizes.setting_f64("initializer_range", 0.02)))
    }
}

/// A BERT encoder with its masked-LM head. Burn paths are HF's less the `bert.` prefix, with
/// `layer_norm` for `LayerNorm` and `self_attn` for `self`.
#[derive(Module, Debug)]
pub struct Bert {
    /// Token, position and token-type embeddings with their norm.
    pub(crate) embeddings: BertEmbeddings,
    /// The encoder layers.
    pub(crate) encoder: BertEncoder,
    /// The masked-LM head (transform, norm, decoder tied to the token embedding).
    pub(crate) cls: BertMlmHead,
    #[module(skip)]
    config: BertConfig,
}

/// Word, position and token-type embeddings, summed and normalised (HF `bert.embeddings`).
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub(crate) word_embeddings: Embedding,
    pub(crate) position_embeddings: Embedding,
    pub(crate) token_type_embeddings: Embedding,
    pub(crate) layer_norm: LayerNorm,
    dropout: Dropout,
}

/// The post-LN encoder layers (HF `bert.encoder`).
#[derive(Module, Debug)]
pub struct BertEncoder {
    pub(crate) layer: Vec<BertLayer>,
}

/// One encoder layer: attention, then the MLP (`intermediate`, `output`).
#[derive(Module, Debug)]
pub struct BertLayer {
    pub(crate) attention: BertAttention,
    pub(crate) intermediate: BertIntermediate,
    pub(crate) output: BertResidual,
}

/// Self-attention and its residual output block.
#[derive(Module, Debug)]
pub struct BertAttention {
    pub(crate) self_attn: BertSelfAttention,
    pub(crate) output: BertResidual,
}

/// The query, key and value projections (HF `attention.self`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    heads: usize,
}

/// `LayerNorm(dropout(dense(x)) + residual)`.
#[derive(Module, Debug)]
pub struct BertResidual {
    pub(crate) dense: Linear,
    pub(crate) layer_norm: LayerNorm,
    dropout: Dropout,
}

/// The MLP's first projection, followed by exact GELU.
#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub(crate) dense: Linear,
}

/// The masked-LM head (HF `cls`).
#[derive(Module, Debug)]
pub struct BertMlmHead {
    pub(crate) predictions: BertPredictions,
}

/// The head's transform and the decoder bias (HF `cls.predictions`).
#[derive(Module, Debug)]
pub struct BertPredictions {
    pub(crate) transform: BertTransform,
    /// The decoder's bias (the decoder weight is the word embedding).
    pub(crate) bias: Param<Tensor<1>>,
}

/// `LayerNorm(gelu(dense(x)))` before the tied decoder.
#[derive(Module, Debug)]
pub struct BertTransform {
    pub(crate) dense: Linear,
    pub(crate) layer_norm: LayerNorm,
}

impl BertSelfAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let split = |l: &Linear| split_heads(l.forward(x.clone()), self.heads);
        attend(
            split(&self.query),
            split(&self.key),
            split(&self.value),
            false,
        )
    }
}

impl BertResidual {
    fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(self.dropout.forward(self.dense.forward(x)) + residual)
    }
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let a = self
            .attention
            .output
            .forward(self.attention.self_attn.forward(x.clone()), x);
        let i = activation::gelu(self.intermediate.dense.forward(a.clone()));
        self.output.forward(i, a)
    }
}

impl Bert {
    /// The model's size.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// MLM logits `[batch, seq, vocab]` for token ids `[batch, seq]` (token type 0, no padding
    /// mask).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let e = &self.embeddings;
        let positions = e
            .position_embeddings
            .weight
            .val()
            .narrow(0, 0, seq)
            .unsqueeze::<3>();
        let token_type = e
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 0, 1)
            .unsqueeze::<3>();
        let mut x = e.dropout.forward(
            e.layer_norm
                .forward(e.word_embeddings.forward(ids) + positions + token_type),
        );
        for layer in &self.encoder.layer {
            x = layer.forward(x);
        }
        let t = &self.cls.predictions.transform;
        let x = t.layer_norm.forward(activation::gelu(t.dense.forward(x)));
        let hidden = self.config.hidden;
        let logits = x
            .reshape([batch * seq, hidden])
            .matmul(e.word_embeddings.weight.val().transpose())
            + self.cls.predictions.bias.val().unsqueeze::<2>();
        logits.reshape([batch, seq, self.config.vocab])
    }

    /// Logits and the mean cross-entropy over the masked positions of a batch.
    pub fn forward_mlm(&self, batch: MlmBatch) -> SequenceOutput {
        let logits = self.forward(batch.inputs);
        let [b, s, v] = logits.dims();
        let log_probs = activation::log_softmax(logits.clone().reshape([b * s, v]), 1);
        let picked = log_probs
            .gather(1, batch.targets.clone().reshape([b * s, 1]))
            .reshape([b * s]);
        let weights = batch.weights.reshape([b * s]);
        let count = weights.clone().sum().clamp_min(1.0);
        let loss = -(picked * weights).sum() / count;
        SequenceOutput::new(loss, logits, None, batch.targets)
    }
}

crate::sequence_steps!(Bert, MlmBatch, forward_mlm);

impl Resizable for Bert {
    fn arch(&self) -> Result<ArchChoice> {
        Ok(ArchChoice::Preset("bert".into()))
    }

    /// After burn-store's PyTorch adapter (transpose, `gamma` → `weight`), the two field names
    /// Rust does not allow or that Burn spells differently.
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[
            (r"\.layer_norm\.", ".LayerNorm."),
            (r"\.self_attn\.", ".self."),
        ]
    }

    fn sizes(&self) -> Sizes {
        self.config.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self> {
        BertConfig::from_sizes(sizes)?.init(device)
    }
}

impl Bert {
    /// The model directory at `dir` (a `transformers` checkpoint, or one this crate wrote).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        CheckpointLayout::new(&ArchChoice::Preset("bert".into()))?
            .with_renames(<Self as Resizable>::renames())
            .load_model(dir, |sizes| BertConfig::from_sizes(sizes)?.init(device))
    }
}

impl VCycleModel for Bert {
    fn flop_counter(&self) -> Result<FlopCounter<MlmBatch>> {
        sequence_flop_counter(self)
    }
}
