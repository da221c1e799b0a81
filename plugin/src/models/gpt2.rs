//! A GPT-2 decoder language model in Burn whose checkpoints are HuggingFace `GPT2LMHeadModel`
//! directories: `transformer.wte.weight`, `transformer.h.{i}.attn.c_attn.weight` (fused q|k|v,
//! Conv1D layout `[in, out]`), …, `transformer.ln_f.bias`, the output head tied to `wte`.
//!
//! The names and layouts come from the `gpt2` preset's rules; Burn's `Linear` stores its weight
//! `[in, out]`, as GPT-2's `Conv1D` does, so only norms are renamed (`gamma`/`beta` →
//! `weight`/`bias`). `c_attn` is one `Linear` hidden → 3·hidden, as in HF.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
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
use crate::data::text::LmBatch;
use crate::error::{Error, Result};
use crate::models::attention::{attend, split_heads};
use crate::models::init::normal_linear;

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
        let linear = |d_in: usize, d_out: usize, std: f64| normal_linear(d_in, d_out, std, device);
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
        let bad = |message: String| {
            Err(Error::Model {
                model: "GPT-2",
                message,
            })
        };
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

    /// The sizes of a model of this configuration; the settings are those of a
    /// `GPT2LMHeadModel`'s `config.json` beyond its sizes, so `transformers` loads it.
    pub fn sizes(&self) -> Sizes {
        Sizes::new(self.layers, self.hidden, self.heads, self.ffn)
            .with_fixed("vocab", self.vocab)
            .with_fixed("positions", self.positions)
            .with_norm_eps(self.layer_norm_eps)
            .with_setting("architectures", json!(["GPT2LMHeadModel"]))
            .with_setting("activation_function", "gelu_new")
            .with_setting("vocab_size", self.vocab)
            .with_setting("n_positions", self.positions)
            .with_setting("n_ctx", self.positions)
            .with_setting("bos_token_id", self.vocab.saturating_sub(1))
            .with_setting("eos_token_id", self.vocab.saturating_sub(1))
            .with_setting("attn_pdrop", 0.0)
            .with_setting("embd_pdrop", self.dropout)
            .with_setting("resid_pdrop", self.dropout)
            .with_setting("initializer_range", self.init_std)
            .with_setting("torch_dtype", "float32")
    }

    /// The configuration of a model of these sizes (`transformers`' defaults where the settings
    /// lack a value: ε = 1e-5, dropout 0.1, σ = 0.02).
    pub fn from_sizes(sizes: &Sizes) -> Result<Self> {
        if !sizes.dims.tied {
            return Err(Error::Sizes(
                "GPT-2: an untied output head is not supported".into(),
            ));
        }
        Ok(Gpt2Config::new(
            sizes.fixed("vocab")?,
            sizes.fixed("positions")?,
            sizes.dims.hidden,
            sizes.dims.layers,
            sizes.dims.heads,
            sizes.dims.ffn,
        )
        .with_layer_norm_eps(sizes.norm_eps.unwrap_or(1e-5))
        .with_dropout(sizes.setting_f64("resid_pdrop", 0.1))
        .with_init_std(sizes.setting_f64("initializer_range", 0.02)))
    }
}

/// A GPT-2 decoder with a tied language-model head. Field names are HF's, so Burn's parameter
/// paths are HF's less the `transformer.` prefix and with `gamma`/`beta` for norms.
#[derive(Module, Debug)]
pub struct Gpt2 {
    /// Token embedding, also the head's weight (tied).
    pub(crate) wte: Embedding,
    /// Learned position embedding.
    pub(crate) wpe: Embedding,
    /// The decoder blocks.
    pub(crate) h: Vec<Gpt2Block>,
    /// The final norm.
    pub(crate) ln_f: LayerNorm,
    dropout: Dropout,
    #[module(skip)]
    config: Gpt2Config,
}

/// One pre-LN decoder block.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    pub(crate) ln_1: LayerNorm,
    pub(crate) attn: Gpt2Attention,
    pub(crate) ln_2: LayerNorm,
    pub(crate) mlp: Gpt2Mlp,
    dropout: Dropout,
}

/// Causal self-attention with fused q|k|v.
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// hidden → 3·hidden, output columns q | k | v.
    pub(crate) c_attn: Linear,
    pub(crate) c_proj: Linear,
    heads: usize,
}

/// The MLP: `c_proj(gelu_tanh(c_fc(x)))`.
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    pub(crate) c_fc: Linear,
    pub(crate) c_proj: Linear,
}

impl Gpt2Attention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hidden = x.dims()[2];
        let qkv = self.c_attn.forward(x);
        let split = |start: usize| split_heads(qkv.clone().narrow(2, start, hidden), self.heads);
        let (q, k, v) = (split(0), split(hidden), split(2 * hidden));
        self.c_proj.forward(attend(q, k, v, true))
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
        crate::data::text::next_token_output(logits, batch.targets)
    }
}

crate::sequence_steps!(Gpt2, LmBatch, forward_lm);

impl Resizable for Gpt2 {
    fn arch(&self) -> Result<ArchChoice> {
        Ok(ArchChoice::Preset("gpt2".into()))
    }

    /// GPT-2's `Conv1D` stores weights `[in, out]` as Burn does: only norms are renamed.
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[(r"\.gamma$", ".weight"), (r"\.beta$", ".bias")]
    }

    fn sizes(&self) -> Sizes {
        self.config.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self> {
        Gpt2Config::from_sizes(sizes)?.init(device)
    }
}

impl Gpt2 {
    /// The model directory at `dir` (a `transformers` checkpoint, or one this crate wrote).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        CheckpointLayout::new(&ArchChoice::Preset("gpt2".into()))?
            .with_renames(<Self as Resizable>::renames())
            .load_model(dir, |sizes| Gpt2Config::from_sizes(sizes)?.init(device))
    }
}

impl VCycleModel for Gpt2 {
    fn flop_counter(&self) -> Result<FlopCounter<LmBatch>> {
        sequence_flop_counter(self)
    }
}
