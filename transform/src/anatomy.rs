//! What a checkpoint is, according to its rules: which rule claims each tensor, at which
//! layer, and the sizes of every space.
//!
//! This file defines the anatomy; the rules are chosen in `detect.rs`, tensors claimed in
//! `claim.rs` and sizes resolved in `dims.rs`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::{Axis, Direction, Rules};

mod claim;
mod detect;
mod dims;

pub use claim::Claim;
use claim::claim;
use detect::choose_rules;
use dims::resolve_dims;
pub use dims::{Dims, lookup};

/// How the architecture is chosen.
#[derive(Debug, Clone, Default)]
pub enum ArchChoice {
    /// From `config.json`'s `model_type`, else from tensor names.
    #[default]
    Detect,
    /// A built-in preset by name (`--arch`).
    Preset(String),
    /// A user's rule file (`--rules`).
    Rules(Box<Rules>),
}

/// The embedding rule (docs/operator-contract.md §3, "Embeddings, tied heads and exactness").
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingRule {
    /// Embeddings averaged/duplicated; the norm before a tied head scaled by the group size.
    /// Function preserving for pre- and post-LN models, tied or not.
    #[default]
    Exact,
    /// The reference implementation's rule: embeddings summed/split. Exact for BERT, not for
    /// pre-LN models such as GPT-2.
    Reference,
}

/// A checkpoint seen through its rules.
#[derive(Debug, Clone)]
pub struct Anatomy {
    /// The rules that claimed the checkpoint.
    pub rules: Rules,
    /// The base-model prefix found in the names (`transformer.`, `bert.`, or empty).
    pub prefix: String,
    /// Claimed tensors, sorted by name.
    pub claims: Vec<Claim>,
    /// Tensors no rule claims (an error for conversions; listed by `inspect`).
    pub unclaimed: Vec<String>,
    /// The model's sizes, read from its tensors and `config.json`.
    pub dims: Dims,
}

/// Keys vcycle writes into the `__metadata__` of a bare `.safetensors` output, so that a file
/// without config.json still knows its head counts.
pub const META_ARCH: &str = "vcycle.arch";
pub const META_HEADS: &str = "vcycle.heads";
pub const META_KV_HEADS: &str = "vcycle.kv_heads";
pub const META_HEAD_DIM: &str = "vcycle.head_dim";
pub const META_TIED: &str = "vcycle.tied";

impl Anatomy {
    /// Chooses the rules, claims every tensor and resolves the sizes. Unclaimed tensors are
    /// recorded, not rejected: call [`Anatomy::require_complete`] before converting.
    pub fn analyze(checkpoint: &Checkpoint, choice: &ArchChoice) -> Result<Anatomy> {
        let rules = choose_rules(checkpoint, choice)?;
        let (prefix, claims, unclaimed) = claim(checkpoint, &rules)?;
        let mut anatomy = Anatomy {
            rules,
            prefix,
            claims,
            unclaimed,
            dims: Dims {
                layers: 0,
                hidden: 0,
                heads: 0,
                kv_heads: 0,
                head_dim: 0,
                ffn: 0,
                tied: false,
                fixed: BTreeMap::new(),
            },
        };
        // Tensors the rules do not know explain a size failure better than the failure does
        // (`--arch bert` on a GPT-2 finds no heads because it claims nothing).
        anatomy.dims = match resolve_dims(checkpoint, &anatomy) {
            Ok(dims) => dims,
            Err(e) => return Err(anatomy.require_complete(checkpoint).err().unwrap_or(e)),
        };
        anatomy.check_required(checkpoint)?;
        Ok(anatomy)
    }

    /// Fails on the first tensor no rule claims.
    pub fn require_complete(&self, checkpoint: &Checkpoint) -> Result<()> {
        match self.unclaimed.first() {
            Some(name) => Err(Error::UnclaimedTensor {
                path: checkpoint
                    .file_of(name)
                    .unwrap_or(checkpoint.path())
                    .to_path_buf(),
                tensor: name.clone(),
                arch: self.rules.name.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_required(&self, checkpoint: &Checkpoint) -> Result<()> {
        let layers = self.dims.layers;
        for (index, rule) in self.rules.tensors.iter().enumerate() {
            let present: Vec<Option<usize>> = self
                .claims
                .iter()
                .filter(|c| c.rule == index)
                .map(|c| c.layer)
                .collect();
            if rule.optional && present.is_empty() {
                continue;
            }
            let expected: Vec<Option<usize>> = if rule.layered {
                (0..layers).map(Some).collect()
            } else {
                vec![None]
            };
            for layer in expected {
                if !present.contains(&layer) {
                    return Err(Error::MissingTensor {
                        path: checkpoint.path().to_path_buf(),
                        tensor: rule.name(&self.prefix, layer),
                        arch: self.rules.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The axes a tensor is transformed along, after the embedding rule and head tying.
    pub fn effective_axes(&self, rule_index: usize, embedding: EmbeddingRule) -> Vec<Axis> {
        let rules = &self.rules.tensors;
        let Some(mut rule) = rules.get(rule_index) else {
            return Vec::new();
        };
        if self.dims.tied
            && let Some(target) = &rule.tied_to
            && let Some(tied) = rules.iter().find(|r| &r.template == target)
        {
            rule = tied;
        }
        let turn_in = match embedding {
            EmbeddingRule::Reference => rule.embedding,
            EmbeddingRule::Exact => rule.head_norm && self.dims.tied,
        };
        if turn_in {
            rule.axes
                .iter()
                .map(|a| a.with_direction(Direction::In))
                .collect()
        } else {
            rule.axes.clone()
        }
    }

    /// Whether the model has an output head: a tensor with a `head.*` role, or a tied head of a
    /// model saved under a base prefix (GPT2LMHeadModel stores `transformer.*` and no
    /// `lm_head`), or of any model whose rules say `tied_head`. Bare base models (BertModel,
    /// GPT2Model, ViTModel) have none and output hidden states.
    pub fn has_head(&self) -> bool {
        let role_present = self.claims.iter().any(|c| {
            self.rule_of(c)
                .and_then(|r| r.role.as_deref())
                .is_some_and(|r| r.starts_with("head."))
        });
        let declared = self.rules.forward.as_ref().is_some_and(|f| f.tied_head);
        role_present || (self.dims.tied && (declared || !self.prefix.is_empty()))
    }

    /// The claim of a tensor with a role, at a layer. Several rules may share a role when a
    /// checkpoint holds at most one of them (DeiT's two alternative classifier heads).
    pub fn by_role(&self, role: &str, layer: Option<usize>) -> Option<&Claim> {
        self.claims.iter().find(|c| {
            c.layer == layer && self.rule_of(c).and_then(|r| r.role.as_deref()) == Some(role)
        })
    }

    /// The rule that claims a tensor.
    pub fn rule_of(&self, claim: &Claim) -> Option<&crate::rules::TensorRule> {
        self.rules.tensors.get(claim.rule)
    }

    /// Number of parameters (float tensors; a tied head stored twice is counted once).
    pub fn parameters(&self, checkpoint: &Checkpoint) -> usize {
        self.claims
            .iter()
            .filter(|c| !(self.dims.tied && self.rule_of(c).is_some_and(|r| r.tied_to.is_some())))
            .filter_map(|c| checkpoint.info(&c.name))
            .filter(|info| crate::dtype::is_float(info.dtype))
            .map(|info| info.numel())
            .sum()
    }
}
