//! The model the forward pass runs: its layers, embeddings, head and input, with every matrix
//! in PyTorch `nn.Linear` orientation (`[out, in]`).

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4};

/// An affine map `y = x·Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, PyTorch `nn.Linear` orientation.
    pub weight: Array2<f32>,
    /// `[out]`.
    pub bias: Option<Array1<f32>>,
}

/// Which normalisation a [`Norm`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `y = (x − mean) / sqrt(var + eps) · w + b`, biased variance.
    LayerNorm,
    /// `y = x / sqrt(mean(x²) + eps) · w` (+ b if given).
    RmsNorm,
}

/// A per-token normalisation over the hidden axis.
#[derive(Debug, Clone)]
pub struct Norm {
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
    /// Gain, `[hidden]`.
    pub weight: Array1<f32>,
    /// Shift, `[hidden]`.
    pub bias: Option<Array1<f32>>,
    /// Added to the variance (or mean square) before the square root.
    pub eps: f32,
}

/// Element-wise nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x/2 · (1 + erf(x/√2))` (HF `gelu`).
    GeluErf,
    /// `x/2 · (1 + tanh(√(2/π) · (x + 0.044715x³)))` (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · σ(x)` (HF `silu`).
    Silu,
}

/// Where a block normalises relative to its residual connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `x = x + attn(attn_norm(x)); x = x + mlp(mlp_norm(x))` (GPT-2, Llama, ViT).
    PreNorm,
    /// `x = attn_norm(x + attn(x)); x = mlp_norm(x + mlp(x))` (BERT).
    PostNorm,
}

/// Multi-head (optionally grouped-query) self-attention projections.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[heads·head_dim, hidden]`.
    pub q: Linear,
    /// `[kv_heads·head_dim, hidden]`.
    pub k: Linear,
    /// `[kv_heads·head_dim, hidden]`.
    pub v: Linear,
    /// `[hidden, heads·head_dim]`.
    pub o: Linear,
}

/// Feed-forward network: `down(act(up(x)))`, or with a gate `down(act(gate(x)) ⊙ up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[ffn, hidden]`.
    pub up: Linear,
    /// `[ffn, hidden]`; present for SwiGLU-style MLPs.
    pub gate: Option<Linear>,
    /// `[hidden, ffn]`.
    pub down: Linear,
}

/// One transformer layer; see [`Placement`] for how the parts are wired.
#[derive(Debug, Clone)]
pub struct Block {
    /// Norm around the attention sub-layer.
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm around the MLP sub-layer.
    pub mlp_norm: Norm,
    /// Feed-forward network.
    pub mlp: Mlp,
}

/// How token positions enter the model.
#[derive(Debug, Clone)]
pub enum Positions {
    /// `[positions, hidden]`, row `t` added to token `t` after embedding.
    Learned(Array2<f32>),
    /// Rotary embedding on q and k, HF `rotate_half` convention:
    /// `q' = q·cos(tθᵢ) + rotate_half(q)·sin(tθᵢ)`, `θᵢ = theta^(−2i/head_dim)`,
    /// frequency `i` shared by dimensions `i` and `i + head_dim/2`.
    Rope {
        /// Base of the inverse frequencies (HF `rope_theta`).
        theta: f32,
    },
    /// No positional information.
    None,
}

/// Model input.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Token ids, `[batch, seq]`.
    Tokens(ArrayView2<'a, i64>),
    /// Images, `[batch, channels, height, width]`.
    Pixels(ArrayView4<'a, f32>),
}

/// ViT-style embedding: a stride-`patch` convolution, with learned tokens prepended in the
/// order CLS, then `extra_tokens`.
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    /// Convolution kernel `[hidden, channels, patch, patch]`.
    pub weight: Array4<f32>,
    /// `[hidden]`.
    pub bias: Array1<f32>,
    /// Patch side (kernel size and stride).
    pub patch: usize,
    /// `[hidden]`.
    pub cls_token: Array1<f32>,
    /// Tokens after CLS and before the patches, each `[hidden]` (DeiT distillation token).
    pub extra_tokens: Vec<Array1<f32>>,
}

/// How inputs become hidden states.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Table lookup, plus an optional constant token-type row.
    Tokens {
        /// `[vocab, hidden]`.
        table: Array2<f32>,
        /// `[hidden]`, row 0 of a token-type table, added to every position.
        token_type: Option<Array1<f32>>,
    },
    /// Image patches.
    Patches(PatchEmbedding),
}

/// Output head, applied after the final norm.
#[derive(Debug, Clone)]
pub struct Head {
    /// `norm(act(linear(x)))` before the output projection (BERT MLM transform).
    pub transform: Option<(Linear, Activation, Norm)>,
    /// `[vocab or labels, hidden]`.
    pub output: Linear,
    /// Classify from token 0 only (ViT), giving `[batch, labels]`.
    pub pool_first_token: bool,
    /// `[labels, hidden]`, a second classifier on token 1 (DeiT's distillation head); the logits
    /// are then `(output(x₀) + distillation(x₁)) / 2`. Needs `pool_first_token`.
    pub distillation: Option<Linear>,
}

/// A complete model with already-oriented weights.
#[derive(Debug, Clone)]
pub struct Model {
    /// Input embedding.
    pub embedding: Embedding,
    /// Positional scheme.
    pub positions: Positions,
    /// Norm right after the embeddings (BERT).
    pub embedding_norm: Option<Norm>,
    /// Transformer layers.
    pub blocks: Vec<Block>,
    /// Norm placement inside blocks.
    pub placement: Placement,
    /// MLP activation (applied to `gate` when present, else to `up`).
    pub activation: Activation,
    /// Mask attention to later positions.
    pub causal: bool,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (equal to `heads` without GQA).
    pub kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Norm after the last block.
    pub final_norm: Option<Norm>,
    /// Output head.
    /// Output head; `None` for a base model, whose output is the final hidden states.
    pub head: Option<Head>,
}
