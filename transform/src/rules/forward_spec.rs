//! A rule file's `[forward]` section: how the model's forward pass is wired.

use serde::Deserialize;

/// How a model's norm, placement, activation and positions work, for the forward pass.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardSpec {
    pub norm: NormKind,
    pub placement: Placement,
    pub activation: ActivationKind,
    pub positions: PositionKind,
    #[serde(default)]
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
pub enum NormKind {
    Layernorm,
    Rmsnorm,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Pre,
    Post,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActivationKind {
    GeluErf,
    GeluTanh,
    Silu,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PositionKind {
    Learned,
    Rope,
    Patches,
}
