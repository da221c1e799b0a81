//! A Llama decoder language model in Burn whose checkpoints are HuggingFace `LlamaForCausalLM`
//! directories: `model.embed_tokens.weight`, `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`
//! (`[out, in]`), `model.layers.{i}.mlp.{gate,up,down}_proj.weight`, RMSNorm weights,
//! `model.norm.weight` and `lm_head.weight` (absent when tied to the embedding).
//!
//! Pre-RMSNorm blocks, rotary positions (HuggingFace's half-split rotation, which Burn's
//! interleaved `RotaryEncoding` is not), a SwiGLU MLP and grouped-query attention. The names
//! and layouts come from the `llama` preset's rules; burn-store's PyTorch adapters transpose
//! the Linear weights and rename the norms' `gamma`, so the field names are HuggingFace's.

use std::path::Path;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData, activation};
use burn::train::SequenceOutput;
use serde_json::{Value, json};
use vcycle_transform::ArchChoice;

use crate::checkpoint::layout::CheckpointLayout;
use crate::checkpoint::resizable::Resizable;
use crate::checkpoint::sizes::Sizes;
use crate::cycle::flops::sequence_flop_counter;
use crate::cycle::{FlopCounter, VCycleModel};
use crate::data::text::LmBatch;
use crate::error::{Error, Result};
use crate::models::attention::{attend, split_heads};

/// The size of a [`Llama`] model.
#[derive(Config, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size (HF `vocab_size`).
    pub vocab: usize,
    /// Width of the residual stream (HF `hidden_size`).
    pub hidden: usize,
    /// Decoder layers (HF `num_hidden_layers`).
    pub layers: usize,
    /// Query heads (HF `num_attention_heads`).
    pub heads: usize,
    /// Key/value heads (HF `num_key_value_heads`); must divide `heads`.
    pub kv_heads: usize,
    /// Size of one head (HF `head_dim`); even, for the rotation.
    pub head_dim: usize,
    /// Width of the SwiGLU MLP (HF `intermediate_size`).
    pub ffn: usize,
    /// Longest sequence the model is meant for (HF `max_position_embeddings`; rotary positions
    /// have no table, so it only bounds the input).
    #[config(default = 2048)]
    pub positions: usize,
    /// RMSNorm ε (HF `rms_norm_eps`).
    #[config(default = 1e-6)]
    pub rms_norm_eps: f64,
    /// Rotary base θ (HF `rope_parameters.rope_theta`, formerly `rope_theta`).
    #[config(default = 10_000.0)]
    pub rope_theta: f64,
    /// Whether the output head is the token embedding (HF `tie_word_embeddings`).
    #[config(default = false)]
    pub tied: bool,
    /// Standard deviation of the normal initialisation (HF `initializer_range`).
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl LlamaConfig {
    /// A randomly initialised model (HuggingFace's scheme: N(0, σ²) weights, unit norms).
    pub fn init(&self, device: &Device) -> Result<Llama> {
        self.check()?;
        let linear = |d_in: usize, d_out: usize| {
            LinearConfig::new(d_in, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device)
        };
        let norm = || {
            RmsNormConfig::new(self.hidden)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let (attn, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let layers = (0..self.layers)
            .map(|_| LlamaLayer {
                input_layernorm: norm(),
                self_attn: LlamaAttention {
                    q_proj: linear(self.hidden, attn),
                    k_proj: linear(self.hidden, kv),
                    v_proj: linear(self.hidden, kv),
                    o_proj: linear(attn, self.hidden),
                    heads: self.heads,
                    kv_heads: self.kv_heads,
                    head_dim: self.head_dim,
                },
                post_attention_layernorm: norm(),
                mlp: LlamaMlp {
                    gate_proj: linear(self.hidden, self.ffn),
                    up_proj: linear(self.hidden, self.ffn),
                    down_proj: linear(self.ffn, self.hidden),
                },
            })
            .collect();
        Ok(Llama {
            embed_tokens: EmbeddingConfig::new(self.vocab, self.hidden)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device),
            layers,
            norm: norm(),
            lm_head: (!self.tied).then(|| linear(self.hidden, self.vocab)),
            config: self.clone(),
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Model {
                model: "Llama",
                message,
            })
        };
        if [
            self.vocab,
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
            self.ffn,
            self.positions,
        ]
        .contains(&0)
        {
            return bad("every size must be positive".into());
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} key/value heads do not divide the {} query heads",
                self.kv_heads, self.heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "the head size {} must be even and positive (rotary positions rotate pairs)",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(format!("rotary base {} must exceed 1", self.rope_theta));
        }
        Ok(())
    }

    /// The sizes of a model of this configuration; the settings are those of a
    /// `LlamaForCausalLM`'s `config.json` beyond its sizes, so `transformers` loads it.
    pub fn sizes(&self) -> Sizes {
        Sizes::new(self.layers, self.hidden, self.heads, self.ffn)
            .with_kv_heads(self.kv_heads)
            .with_head_dim(self.head_dim)
            .with_tied(self.tied)
            .with_fixed("vocab", self.vocab)
            .with_norm_eps(self.rms_norm_eps)
            .with_setting("architectures", json!(["LlamaForCausalLM"]))
            .with_setting("hidden_act", "silu")
            .with_setting("vocab_size", self.vocab)
            .with_setting("max_position_embeddings", self.positions)
            .with_setting(
                "rope_parameters",
                json!({"rope_theta": self.rope_theta, "rope_type": "default"}),
            )
            .with_setting("attention_bias", false)
            .with_setting("attention_dropout", 0.0)
            .with_setting("mlp_bias", false)
            .with_setting("initializer_range", self.init_std)
            .with_setting("torch_dtype", "float32")
    }

    /// The configuration of a model of these sizes (`transformers`' defaults where the settings
    /// lack a value: 2048 positions, ε = 1e-6, θ = 10⁴, σ = 0.02). Refuses biases, which this
    /// model does not have.
    pub fn from_sizes(sizes: &Sizes) -> Result<Self> {
        for key in ["attention_bias", "mlp_bias"] {
            if sizes.settings.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(Error::Sizes(format!(
                    "Llama: `{key} = true` is not supported (the model has no biases)"
                )));
            }
        }
        let theta = sizes
            .settings
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| sizes.settings.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let rope_type = sizes
            .settings
            .get("rope_parameters")
            .and_then(|p| p.get("rope_type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(Error::Sizes(format!(
                "Llama: rotary scaling `{rope_type}` is not supported (only `default`)"
            )));
        }
        let positions = sizes
            .settings
            .get("max_position_embeddings")
            .and_then(Value::as_u64)
            .map_or(2048, |p| p as usize);
        Ok(LlamaConfig::new(
            sizes.fixed("vocab")?,
            sizes.dims.hidden,
            sizes.dims.layers,
            sizes.dims.heads,
            sizes.dims.kv_heads,
            sizes.dims.head_dim,
            sizes.dims.ffn,
        )
        .with_positions(positions)
        .with_rms_norm_eps(sizes.norm_eps.unwrap_or(1e-6))
        .with_rope_theta(theta)
        .with_tied(sizes.dims.tied)
        .with_init_std(sizes.setting_f64("initializer_range", 0.02)))
    }
}

/// A Llama decoder with its language-model head (`lm_head`, or the token embedding when tied).
/// Field names are HuggingFace's, so Burn's parameter paths are HF's less the `model.` prefix.
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding (also the head's weight when tied).
    pub(crate) embed_tokens: Embedding,
    /// The decoder layers.
    pub(crate) layers: Vec<LlamaLayer>,
    /// The final RMSNorm.
    pub(crate) norm: RmsNorm,
    /// None when the head is tied to `embed_tokens`.
    pub(crate) lm_head: Option<Linear>,
    #[module(skip)]
    config: LlamaConfig,
}

/// One pre-RMSNorm decoder layer.
#[derive(Module, Debug)]
pub struct LlamaLayer {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: LlamaAttention,
    pub(crate) post_attention_layernorm: RmsNorm,
    pub(crate) mlp: LlamaMlp,
}

/// Causal self-attention with rotary positions; `kv_heads` key/value heads, each shared by
/// `heads / kv_heads` consecutive query heads.
#[derive(Module, Debug)]
pub struct LlamaAttention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// The SwiGLU MLP: `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

/// The rotation of positions `0..seq`: `cos` and `sin`, each `[1, 1, seq, head_dim]`, the
/// frequencies repeated over the two halves as HuggingFace's `rotate_half` expects.
struct Rotary {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rotary {
    fn new(seq: usize, head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq * head_dim);
        let mut sin = Vec::with_capacity(seq * head_dim);
        for position in 0..seq {
            for i in 0..head_dim {
                let exponent = (2 * (i % half)) as f64 / head_dim as f64;
                let angle = position as f64 / theta.powf(exponent);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |values: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(values, [seq, head_dim]), device)
                .unsqueeze::<4>()
        };
        Rotary {
            cos: table(cos),
            sin: table(sin),
        }
    }

    /// `x · cos + rotate_half(x) · sin` for `x` `[batch, heads, seq, head_dim]`, where
    /// `rotate_half([a, b]) = [−b, a]` over the two halves of the head.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let half = x.dims()[3] / 2;
        let first = x.clone().narrow(3, 0, half);
        let second = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

impl LlamaAttention {
    fn forward(&self, x: Tensor<3>, rotary: &Rotary) -> Tensor<3> {
        let q = rotary.apply(split_heads(self.q_proj.forward(x.clone()), self.heads));
        let k = rotary.apply(split_heads(self.k_proj.forward(x.clone()), self.kv_heads));
        let v = split_heads(self.v_proj.forward(x), self.kv_heads);
        let (k, v) = (self.repeat_kv(k), self.repeat_kv(v));
        self.o_proj.forward(attend(q, k, v, true))
    }

    /// `[batch, kv_heads, seq, d]` → `[batch, heads, seq, d]`, key/value head j serving query
    /// heads `j·r … j·r + r − 1` (r = heads / kv_heads), as HuggingFace's `repeat_kv`.
    fn repeat_kv(&self, t: Tensor<4>) -> Tensor<4> {
        let repeat = self.heads / self.kv_heads;
        if repeat == 1 {
            return t;
        }
        let [batch, kv_heads, seq, d] = t.dims();
        t.unsqueeze_dim::<5>(2)
            .repeat_dim(2, repeat)
            .reshape([batch, kv_heads * repeat, seq, d])
    }
}

impl LlamaLayer {
    fn forward(&self, x: Tensor<3>, rotary: &Rotary) -> Tensor<3> {
        let a = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), rotary);
        let x = x + a;
        let h = self.post_attention_layernorm.forward(x.clone());
        let gate = activation::silu(self.mlp.gate_proj.forward(h.clone()));
        x + self
            .mlp
            .down_proj
            .forward(gate * self.mlp.up_proj.forward(h))
    }
}

impl Llama {
    /// The model's size.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let rotary = Rotary::new(
            seq,
            self.config.head_dim,
            self.config.rope_theta,
            &ids.device(),
        );
        let mut x = self.embed_tokens.forward(ids);
        for layer in &self.layers {
            x = layer.forward(x, &rotary);
        }
        let x = self.norm.forward(x);
        match &self.lm_head {
            Some(head) => head.forward(x),
            None => x
                .reshape([batch * seq, self.config.hidden])
                .matmul(self.embed_tokens.weight.val().transpose())
                .reshape([batch, seq, self.config.vocab]),
        }
    }

    /// Logits and the mean next-token cross-entropy of a batch.
    pub fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
        let logits = self.forward(batch.inputs);
        crate::data::text::next_token_output(logits, batch.targets)
    }
}

crate::sequence_steps!(Llama, LmBatch, forward_lm);

impl Resizable for Llama {
    fn arch(&self) -> Result<ArchChoice> {
        Ok(ArchChoice::Preset("llama".into()))
    }

    fn sizes(&self) -> Sizes {
        self.config.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self> {
        LlamaConfig::from_sizes(sizes)?.init(device)
    }
}

impl Llama {
    /// The model directory at `dir` (a `transformers` checkpoint, or one this crate wrote).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        CheckpointLayout::new(&ArchChoice::Preset("llama".into()))?
            .with_renames(<Self as Resizable>::renames())
            .load_model(dir, |sizes| LlamaConfig::from_sizes(sizes)?.init(device))
    }
}

impl VCycleModel for Llama {
    fn flop_counter(&self) -> Result<FlopCounter<LmBatch>> {
        sequence_flop_counter(self)
    }
}
