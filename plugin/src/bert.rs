//! A BERT masked-language-model encoder in Burn whose checkpoints are HuggingFace
//! `BertForMaskedLM` directories: `bert.embeddings.word_embeddings.weight`, …,
//! `bert.encoder.layer.{i}.attention.self.query.weight` (`torch.nn.Linear`, `[out, in]`), …,
//! `cls.predictions.transform.dense.weight`, `cls.predictions.bias`; the decoder is tied to the
//! word embeddings. Post-LN, GELU (erf), bidirectional attention, token type 0 everywhere.
//!
//! Burn stores `Linear` weights `[in, out]`, so export and import go through burn-store's
//! PyTorch adapters (transpose, `gamma`/`beta` ↔ `weight`/`bias`) and rename `layer_norm` ↔
//! `LayerNorm`, `self_attn` ↔ `self`, and the `bert.` prefix.

use std::path::Path;
use std::sync::Arc;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, activation};
use burn::train::SequenceOutput;
use serde_json::json;

use crate::error::{Error, Result};
use crate::hf::{self, HfLayout, HfModel, LinearLayout};
use crate::text::MlmBatch;
use crate::vcycle::{FlopCounter, VCycleModel};

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
            return Err(Error::VCycleConfig(format!(
                "BERT: {} heads do not divide the width {}",
                self.heads, self.hidden
            )));
        }
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.init_std,
        };
        let linear = |d_in: usize, d_out: usize| {
            let mut l = LinearConfig::new(d_in, d_out)
                .with_initializer(normal.clone())
                .init(device);
            l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            l
        };
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

    /// The HF `config.json` of a `BertForMaskedLM` of this size (tied decoder).
    pub fn hf_config(&self) -> serde_json::Value {
        json!({
            "architectures": ["BertForMaskedLM"],
            "attention_probs_dropout_prob": 0.0,
            "dtype": "float32",
            "hidden_act": "gelu",
            "hidden_dropout_prob": self.dropout,
            "hidden_size": self.hidden,
            "initializer_range": self.init_std,
            "intermediate_size": self.ffn,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.positions,
            "model_type": "bert",
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "type_vocab_size": self.token_types,
            "vocab_size": self.vocab,
        })
    }

    /// Reads the size from a BERT `config.json`.
    pub fn from_hf_config(config: &serde_json::Value, dir: &Path) -> Result<Self> {
        if config
            .get("hidden_act")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu")
            != "gelu"
        {
            return Err(Error::ModelConfig {
                path: dir.to_path_buf(),
                message: "only hidden_act = \"gelu\" (erf) is supported".into(),
            });
        }
        if config.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(false) {
            return Err(Error::ModelConfig {
                path: dir.to_path_buf(),
                message: "an untied decoder (tie_word_embeddings = false) is not supported".into(),
            });
        }
        Ok(BertConfig::new(
            hf::config_usize(config, dir, &["vocab_size"])?,
            hf::config_usize(config, dir, &["max_position_embeddings"])?,
            hf::config_usize(config, dir, &["hidden_size"])?,
            hf::config_usize(config, dir, &["num_hidden_layers"])?,
            hf::config_usize(config, dir, &["num_attention_heads"])?,
            hf::config_usize(config, dir, &["intermediate_size"])?,
        )
        .with_token_types(hf::config_usize(config, dir, &["type_vocab_size"]).unwrap_or(2))
        .with_layer_norm_eps(hf::config_f64(config, &["layer_norm_eps"], 1e-12))
        .with_dropout(hf::config_f64(config, &["hidden_dropout_prob"], 0.1))
        .with_init_std(hf::config_f64(config, &["initializer_range"], 0.02)))
    }

    /// Training FLOPs of one batch of `batch` sequences of `seq` tokens:
    /// `3 · batch · seq · (2·(W + hidden² + hidden·vocab) + 4·layers·seq·hidden)` with
    /// `W = layers · (4·hidden² + 2·hidden·ffn)`; `hidden²` is the MLM head's transform and
    /// `hidden·vocab` its tied decoder, evaluated at every position (as HF does). Same
    /// conventions as [`crate::Gpt2Config::train_flops`].
    pub fn train_flops(&self, batch: usize, seq: usize) -> f64 {
        let (l, d, f, v) = (
            self.layers as f64,
            self.hidden as f64,
            self.ffn as f64,
            self.vocab as f64,
        );
        let w = l * (4.0 * d * d + 2.0 * d * f);
        let per_token = 2.0 * (w + d * d + d * v) + 4.0 * l * seq as f64 * d;
        3.0 * batch as f64 * seq as f64 * per_token
    }
}

/// A BERT encoder with its masked-LM head. Burn paths are HF's less the `bert.` prefix, with
/// `layer_norm` for `LayerNorm` and `self_attn` for `self`.
#[derive(Module, Debug)]
pub struct Bert {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub cls: BertMlmHead,
    #[module(skip)]
    config: BertConfig,
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    dropout: Dropout,
}

#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layer: Vec<BertLayer>,
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertAttention,
    pub intermediate: BertIntermediate,
    pub output: BertResidual,
}

#[derive(Module, Debug)]
pub struct BertAttention {
    pub self_attn: BertSelfAttention,
    pub output: BertResidual,
}

#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    heads: usize,
}

/// `LayerNorm(dropout(dense(x)) + residual)`.
#[derive(Module, Debug)]
pub struct BertResidual {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
    dropout: Dropout,
}

#[derive(Module, Debug)]
pub struct BertIntermediate {
    pub dense: Linear,
}

#[derive(Module, Debug)]
pub struct BertMlmHead {
    pub predictions: BertPredictions,
}

#[derive(Module, Debug)]
pub struct BertPredictions {
    pub transform: BertTransform,
    /// The decoder's bias (the decoder weight is the word embedding).
    pub bias: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
pub struct BertTransform {
    pub dense: Linear,
    pub layer_norm: LayerNorm,
}

impl BertSelfAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let split = |l: &Linear| {
            l.forward(x.clone())
                .reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        attention(
            split(&self.query),
            split(&self.key),
            split(&self.value),
            None,
            None,
            options,
        )
        .swap_dims(1, 2)
        .reshape([batch, seq, hidden])
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

hf::sequence_steps!(Bert, MlmBatch, forward_mlm);

/// How [`Bert`] maps to its HuggingFace checkpoint.
const HF_LAYOUT: HfLayout = HfLayout {
    // Burn path → HF name on export, after the PyTorch adapter (`gamma` → `weight`).
    export_names: &[
        (r"^(embeddings|encoder)\.", "bert.$1."),
        (r"\.layer_norm\.", ".LayerNorm."),
        (r"\.self_attn\.", ".self."),
    ],
    // HF name → Burn path on import, before the PyTorch adapter (`BertForMaskedLM` with the
    // prefix, `BertModel` without).
    import_names: &[
        (r"^bert\.", ""),
        (r"\.LayerNorm\.", ".layer_norm."),
        (r"\.self\.", ".self_attn."),
    ],
    linear: LinearLayout::OutIn,
    may_be_unused,
};

/// HF tensors a BERT checkpoint may hold that this model does not use: index buffers, the
/// pooler, the tied decoder and its bias alias, the next-sentence head.
fn may_be_unused(name: &str) -> bool {
    name.ends_with("embeddings.position_ids")
        || name.ends_with("embeddings.token_type_ids")
        || name.starts_with("pooler.")
        || name.starts_with("cls.predictions.decoder.")
        || name.starts_with("cls.seq_relationship.")
}

impl HfModel for Bert {
    fn arch() -> &'static str {
        "bert"
    }

    fn write_hf_files(&self, dir: &Path) -> Result<()> {
        HF_LAYOUT.write(self, &self.config.hf_config(), dir)
    }

    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let mut model = BertConfig::from_hf_config(&hf::read_config(dir)?, dir)?.init(device)?;
        HF_LAYOUT.load(&mut model, dir)?;
        Ok(model)
    }
}

impl VCycleModel for Bert {
    fn flop_counter(&self) -> FlopCounter<MlmBatch> {
        let config = self.config.clone();
        Arc::new(move |batch: &MlmBatch| {
            let [b, s] = batch.inputs.dims();
            config.train_flops(b, s)
        })
    }
}
