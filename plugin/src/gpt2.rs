//! A GPT-2 decoder language model in Burn whose checkpoints are HuggingFace `GPT2LMHeadModel`
//! directories: `transformer.wte.weight`, `transformer.h.{i}.attn.c_attn.weight` (fused q|k|v,
//! Conv1D layout `[in, out]`), …, `transformer.ln_f.bias`, the output head tied to `wte`.
//!
//! Burn's `Linear` stores its weight `[in, out]`, as GPT-2's `Conv1D` does, so no tensor is
//! transposed: export and import only rename (`gamma`/`beta` ↔ `weight`/`bias`, the
//! `transformer.` prefix). `c_attn` is one `Linear` hidden → 3·hidden, as in HF.

use std::path::Path;
use std::sync::Arc;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
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
use crate::text::LmBatch;
use crate::vcycle::{FlopCounter, VCycleModel};

/// The size of a [`Gpt2`] model.
#[derive(Config, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size (HF `vocab_size`).
    pub vocab: usize,
    /// Maximum sequence length (HF `n_positions`).
    pub positions: usize,
    /// Width of the residual stream (HF `n_embd`).
    pub hidden: usize,
    /// Decoder blocks (HF `n_layer`).
    pub layers: usize,
    /// Attention heads (HF `n_head`); must divide `hidden`.
    pub heads: usize,
    /// Width of the MLP (HF `n_inner`; GPT-2 uses 4·hidden).
    pub ffn: usize,
    /// LayerNorm ε (HF `layer_norm_epsilon`).
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Dropout on the embeddings and on each residual branch (HF `embd_pdrop`, `resid_pdrop`).
    /// Attention probabilities are not dropped (HF `attn_pdrop` is written as 0).
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation (HF `initializer_range`).
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl Gpt2Config {
    /// A randomly initialised model (GPT-2's scheme: N(0, σ²) weights, zero biases, unit norms,
    /// residual output projections scaled by 1/√(2·layers)).
    pub fn init(&self, device: &Device) -> Result<Gpt2> {
        self.check()?;
        let normal = |std: f64| Initializer::Normal { mean: 0.0, std };
        let linear = |d_in: usize, d_out: usize, std: f64| {
            let mut l = LinearConfig::new(d_in, d_out)
                .with_initializer(normal(std))
                .init(device);
            l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
            l
        };
        let norm = || {
            LayerNormConfig::new(self.hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let residual_std = self.init_std / ((2 * self.layers) as f64).sqrt();
        let h = (0..self.layers)
            .map(|_| Gpt2Block {
                ln_1: norm(),
                attn: Gpt2Attention {
                    c_attn: linear(self.hidden, 3 * self.hidden, self.init_std),
                    c_proj: linear(self.hidden, self.hidden, residual_std),
                    heads: self.heads,
                },
                ln_2: norm(),
                mlp: Gpt2Mlp {
                    c_fc: linear(self.hidden, self.ffn, self.init_std),
                    c_proj: linear(self.ffn, self.hidden, residual_std),
                },
                dropout: DropoutConfig::new(self.dropout).init(),
            })
            .collect();
        Ok(Gpt2 {
            wte: EmbeddingConfig::new(self.vocab, self.hidden)
                .with_initializer(normal(self.init_std))
                .init(device),
            wpe: EmbeddingConfig::new(self.positions, self.hidden)
                .with_initializer(normal(self.init_std))
                .init(device),
            h,
            ln_f: norm(),
            dropout: DropoutConfig::new(self.dropout).init(),
            config: self.clone(),
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |message: String| Err(Error::VCycleConfig(format!("GPT-2: {message}")));
        if self.heads == 0 || !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads do not divide the width {}",
                self.heads, self.hidden
            ));
        }
        if self.vocab == 0 || self.positions == 0 || self.layers == 0 || self.ffn == 0 {
            return bad("every size must be positive".into());
        }
        Ok(())
    }

    /// The HF `config.json` of a `GPT2LMHeadModel` of this size (tied output head).
    pub fn hf_config(&self) -> serde_json::Value {
        json!({
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.0,
            "bos_token_id": self.vocab - 1,
            "embd_pdrop": self.dropout,
            "eos_token_id": self.vocab - 1,
            "initializer_range": self.init_std,
            "layer_norm_epsilon": self.layer_norm_eps,
            "model_type": "gpt2",
            "n_ctx": self.positions,
            "n_embd": self.hidden,
            "n_head": self.heads,
            "n_inner": self.ffn,
            "n_layer": self.layers,
            "n_positions": self.positions,
            "resid_pdrop": self.dropout,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "vocab_size": self.vocab,
        })
    }

    /// Reads the size from a GPT-2 `config.json` (HF defaults for absent optional keys:
    /// `n_inner` = 4·`n_embd`, ε = 1e-5, dropout 0.1).
    pub fn from_hf_config(config: &serde_json::Value, dir: &Path) -> Result<Self> {
        let hidden = hf::config_usize(config, dir, &["n_embd"])?;
        let ffn = match config.get("n_inner") {
            Some(v) if !v.is_null() => hf::config_usize(config, dir, &["n_inner"])?,
            _ => 4 * hidden,
        };
        if config.get("tie_word_embeddings").and_then(|v| v.as_bool()) == Some(false) {
            return Err(Error::ModelConfig {
                path: dir.to_path_buf(),
                message: "an untied output head (tie_word_embeddings = false) is not supported"
                    .into(),
            });
        }
        Ok(Gpt2Config::new(
            hf::config_usize(config, dir, &["vocab_size"])?,
            hf::config_usize(config, dir, &["n_positions", "n_ctx"])?,
            hidden,
            hf::config_usize(config, dir, &["n_layer"])?,
            hf::config_usize(config, dir, &["n_head"])?,
            ffn,
        )
        .with_layer_norm_eps(hf::config_f64(config, &["layer_norm_epsilon"], 1e-5))
        .with_dropout(hf::config_f64(config, &["resid_pdrop"], 0.1))
        .with_init_std(hf::config_f64(config, &["initializer_range"], 0.02)))
    }

    /// Parameters (all tensors of the HF checkpoint; the tied head counts once).
    pub fn num_params(&self) -> usize {
        let (d, f) = (self.hidden, self.ffn);
        let block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
        (self.vocab + self.positions) * d + self.layers * block + 2 * d
    }

    /// Training FLOPs (forward + backward) of one batch of `batch` sequences of `seq` tokens:
    ///
    /// `3 · batch · seq · (2·(W + hidden·vocab) + 4·layers·seq·hidden)`
    ///
    /// where `W = layers · (4·hidden² + 2·hidden·ffn)` are the weights of the block matrix
    /// products (q|k|v, attention output, MLP up and down), `hidden·vocab` the tied output head,
    /// `4·layers·seq·hidden` the attention scores and weighted sums per token (every key counted:
    /// the causal mask is not discounted), ×2 for multiply-add and ×3 for forward + backward.
    /// Biases, norms, softmax and embedding look-ups are left out (the usual `6·N·tokens`
    /// approximation plus the attention term).
    pub fn train_flops(&self, batch: usize, seq: usize) -> f64 {
        let (l, d, f, v) = (
            self.layers as f64,
            self.hidden as f64,
            self.ffn as f64,
            self.vocab as f64,
        );
        let w = l * (4.0 * d * d + 2.0 * d * f);
        let per_token = 2.0 * (w + d * v) + 4.0 * l * seq as f64 * d;
        3.0 * batch as f64 * seq as f64 * per_token
    }
}

/// A GPT-2 decoder with a tied language-model head. Field names are HF's, so Burn's parameter
/// paths are HF's less the `transformer.` prefix and with `gamma`/`beta` for norms.
#[derive(Module, Debug)]
pub struct Gpt2 {
    pub wte: Embedding,
    pub wpe: Embedding,
    pub h: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
    dropout: Dropout,
    #[module(skip)]
    config: Gpt2Config,
}

/// One pre-LN decoder block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub attn: Gpt2Attention,
    pub ln_2: LayerNorm,
    pub mlp: Gpt2Mlp,
    dropout: Dropout,
}

/// Causal self-attention with fused q|k|v.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// hidden → 3·hidden, output columns q | k | v.
    pub c_attn: Linear,
    pub c_proj: Linear,
    heads: usize,
}

/// The MLP: `c_proj(gelu_tanh(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
}

impl Gpt2Attention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / self.heads;
        let qkv = self.c_attn.forward(x);
        let split = |start: usize| {
            qkv.clone()
                .narrow(2, start, hidden)
                .reshape([batch, seq, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (split(0), split(hidden), split(2 * hidden));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let out = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden]);
        self.c_proj.forward(out)
    }
}

impl Gpt2Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let a = self.attn.forward(self.ln_1.forward(x.clone()));
        let x = x + self.dropout.forward(a);
        let h = self.mlp.c_fc.forward(self.ln_2.forward(x.clone()));
        let m = self.mlp.c_proj.forward(activation::gelu_approximate(h));
        x + self.dropout.forward(m)
    }
}

impl Gpt2 {
    /// The model's size.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (seq ≤ positions).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let positions = self.wpe.weight.val().narrow(0, 0, seq).unsqueeze::<3>();
        let mut x = self.dropout.forward(self.wte.forward(ids) + positions);
        for block in &self.h {
            x = block.forward(x);
        }
        let x = self.ln_f.forward(x);
        let hidden = self.config.hidden;
        let logits = x
            .reshape([batch * seq, hidden])
            .matmul(self.wte.weight.val().transpose());
        logits.reshape([batch, seq, self.config.vocab])
    }

    /// Logits and the mean next-token cross-entropy of a batch.
    pub fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
        let logits = self.forward(batch.inputs);
        let [b, s, v] = logits.dims();
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(
                logits.clone().reshape([b * s, v]),
                batch.targets.clone().reshape([b * s]),
            );
        SequenceOutput::new(loss, logits, None, batch.targets)
    }
}

hf::sequence_steps!(Gpt2, LmBatch, forward_lm);

/// How [`Gpt2`] maps to its HuggingFace checkpoint.
const HF_LAYOUT: HfLayout = HfLayout {
    // Burn path → HF name, applied in order on export.
    export_names: &[
        (r"^(.*)\.gamma$", "$1.weight"),
        (r"^(.*)\.beta$", "$1.bias"),
        (r"^", "transformer."),
    ],
    // HF name → Burn path on import (`GPT2LMHeadModel` with the prefix, `GPT2Model` without).
    import_names: &[
        (r"^transformer\.", ""),
        (r"^(.*ln_[12f])\.weight$", "$1.gamma"),
        (r"^(.*ln_[12f])\.bias$", "$1.beta"),
    ],
    linear: LinearLayout::InOut,
    may_be_unused,
};

/// HF tensors a GPT-2 checkpoint may hold that this model does not use: the tied head and the
/// causal-mask buffers of older `transformers` versions.
fn may_be_unused(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

impl HfModel for Gpt2 {
    fn arch() -> &'static str {
        "gpt2"
    }

    fn write_hf_files(&self, dir: &Path) -> Result<()> {
        HF_LAYOUT.write(self, &self.config.hf_config(), dir)
    }

    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let mut model = Gpt2Config::from_hf_config(&hf::read_config(dir)?, dir)?.init(device)?;
        HF_LAYOUT.load(&mut model, dir)?;
        Ok(model)
    }
}

impl VCycleModel for Gpt2 {
    fn flop_counter(&self) -> FlopCounter<LmBatch> {
        let config = self.config.clone();
        Arc::new(move |batch: &LmBatch| {
            let [b, s] = batch.inputs.dims();
            config.train_flops(b, s)
        })
    }
}
