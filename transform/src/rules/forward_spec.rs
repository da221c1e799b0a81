//! A rule file's `[forward]` section: how the model's forward pass is wired.

use serde::Deserialize;

/// How a model's norm, placement, activation and positions work, for the forward pass.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    /// The kind of norm.
    pub norm: NormKind,
    /// Where the norms sit relative to the residual connections.
    pub placement: Placement,
    /// The MLP's activation.
    pub activation: ActivationKind,
    /// How positions enter the model.
    pub positions: PositionKind,
    #[serde(default)]
    /// Whether attention is causal (a decoder).
    pub causal: bool,
    /// Whether the classifier reads the first token only (ViT; with a distillation head, DeiT's
    /// second token too).
    #[serde(default)]
    pub pool_first_token: bool,
    /// The norms' epsilon when config.json gives none (timm's ViT uses 1e-6; default 1e-5).
    #[serde(default)]
    pub norm_eps: Option<f64>,
    /// Whether a tied output head is part of the model even when its checkpoint has no prefix.
    /// Without it a prefix-less checkpoint whose head is tied (absent) is taken for a base
    /// model, as HuggingFace's GPT2Model is, and the forward pass ends at the hidden states.
    #[serde(default)]
    pub tied_head: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
/// A model's norm.
pub enum NormKind {
    /// LayerNorm: mean and variance, weight and bias.
    Layernorm,
    /// RMSNorm: root mean square, weight only.
    Rmsnorm,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
/// Where the norms sit.
pub enum Placement {
    /// Before each sublayer, inside the residual branch (GPT-2, Llama, ViT).
    Pre,
    /// After each residual addition (BERT).
    Post,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
/// The MLP's activation.
pub enum ActivationKind {
    /// GELU with the error function.
    GeluErf,
    /// GELU's tanh approximation.
    GeluTanh,
    /// SiLU, `x · σ(x)`.
    Silu,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
/// How positions enter the model.
pub enum PositionKind {
    /// Learned position embeddings added to the tokens'.
    Learned,
    /// Rotary embeddings applied to queries and keys.
    Rope,
    /// Image patches with learned position embeddings and a class token.
    Patches,
}
