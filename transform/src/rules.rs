//! Architecture rules as data: which tensor axis lies in which space, in which direction.
//!
//! The built-in presets (`transform/rules/*.toml`) and a user's `--rules FILE` are parsed by the
//! same code into the same [`Rules`]; nothing else in the crate knows a model's tensor names.
//! The schema is documented in docs/rule-files.md.
//!
//! This file defines the rule file and its parser; the axes are in `axis.rs`, the `[forward]`
//! section in `forward_spec.rs` and one tensor's rule in `tensor_rule.rs`.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};

mod axis;
mod forward_spec;
#[cfg(test)]
mod rule_file_tests;
mod tensor_rule;

pub use axis::{Axis, Direction, Space};
pub use forward_spec::{ActivationKind, ForwardSpec, NormKind, Placement, PositionKind};
use tensor_rule::NamePattern;
pub use tensor_rule::TensorRule;

/// The built-in presets, shipped as rule files and parsed like any user's file.
pub const PRESETS: &[(&str, &str)] = &[
    ("bert", include_str!("../rules/bert.toml")),
    ("gpt2", include_str!("../rules/gpt2.toml")),
    ("llama", include_str!("../rules/llama.toml")),
    ("vit", include_str!("../rules/vit.toml")),
    ("vit-timm", include_str!("../rules/vit-timm.toml")),
];

/// The config.json keys that hold each size, tried in order (first present wins).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigKeys {
    #[serde(default)]
    /// Keys holding the width of the residual stream (`hidden`).
    pub hidden: Vec<String>,
    #[serde(default)]
    /// Keys holding the number of layers.
    pub layers: Vec<String>,
    #[serde(default)]
    /// Keys holding the number of query heads.
    pub heads: Vec<String>,
    #[serde(default)]
    /// Keys holding the number of key/value heads (grouped-query attention).
    pub kv_heads: Vec<String>,
    #[serde(default)]
    /// Keys holding the width of the MLP (`ffn`).
    pub ffn: Vec<String>,
    #[serde(default)]
    /// Keys holding the width of one head.
    pub head_dim: Vec<String>,
    #[serde(default)]
    /// Keys holding the norm ε.
    pub norm_eps: Vec<String>,
    /// The key saying whether the output head is tied to the token embedding.
    #[serde(default)]
    pub tie: Option<String>,
    /// Whether the head is tied when the config does not say.
    #[serde(default)]
    pub tie_default: bool,
    /// Keys for the rotary base, tried in order; a dotted key reads a nested object
    /// (`rope_parameters.rope_theta`).
    #[serde(default)]
    pub rope_theta: Vec<String>,
    /// Keys for the side of the input image (patch models); without one, the side follows from
    /// the number of position embeddings.
    #[serde(default)]
    pub image_size: Vec<String>,
    /// Keys giving the size of a fixed space (`vocab = ["vocab_size"]`), checked against the
    /// tensors: a config that disagrees with them is refused.
    #[serde(default)]
    pub spaces: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DetectSpec {
    #[serde(default)]
    model_types: Vec<String>,
    /// Tensor names (relative to the base prefix) whose presence, all together, identifies the
    /// architecture.
    #[serde(default)]
    tensors: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorSpec {
    name: String,
    axes: Vec<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    optional: bool,
    #[serde(default)]
    root: bool,
    #[serde(default)]
    embedding: bool,
    #[serde(default)]
    head_norm: bool,
    #[serde(default)]
    tied_to: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFileSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    detect: DetectSpec,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    config: ConfigKeys,
    #[serde(default)]
    forward: Option<ForwardSpec>,
    tensors: Vec<TensorSpec>,
}

/// A parsed, validated rule file.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The architecture's name (`gpt2`, a rule file's `name`).
    pub name: String,
    /// One line on what the rules describe.
    pub description: String,
    /// `config.json` `model_type` values that select these rules.
    pub model_types: Vec<String>,
    /// Tensor names whose presence selects these rules.
    pub detect_tensors: Vec<String>,
    /// Prefixes a checkpoint's names may carry (`transformer.`, or none), the first one written.
    pub prefixes: Vec<String>,
    /// The `config.json` keys of each size.
    pub config: ConfigKeys,
    /// How the model computes, for `vcycle verify`'s forward pass (optional).
    pub forward: Option<ForwardSpec>,
    /// One rule per tensor (per layer for a `{layer}` template).
    pub tensors: Vec<TensorRule>,
    /// The rule file it was read from (an input: never written over).
    pub source: Option<std::path::PathBuf>,
}

/// Roles the forward pass understands; a role outside this list is a typo in a rule file.
pub const ROLES: &[&str] = &[
    "embed.tokens",
    "embed.positions",
    "embed.token_types",
    "embed.norm.weight",
    "embed.norm.bias",
    "embed.patch.weight",
    "embed.patch.bias",
    "embed.cls",
    "embed.distillation",
    "attn.norm.weight",
    "attn.norm.bias",
    "attn.q.weight",
    "attn.q.bias",
    "attn.k.weight",
    "attn.k.bias",
    "attn.v.weight",
    "attn.v.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.o.weight",
    "attn.o.bias",
    "mlp.norm.weight",
    "mlp.norm.bias",
    "mlp.up.weight",
    "mlp.up.bias",
    "mlp.gate.weight",
    "mlp.gate.bias",
    "mlp.down.weight",
    "mlp.down.bias",
    "final_norm.weight",
    "final_norm.bias",
    "head.transform.weight",
    "head.transform.bias",
    "head.transform.norm.weight",
    "head.transform.norm.bias",
    "head.weight",
    "head.bias",
    "head.distillation.weight",
    "head.distillation.bias",
];

impl Rules {
    /// A built-in preset by name.
    pub fn preset(name: &str) -> Result<Rules> {
        let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            return Err(Error::RuleFile {
                file: name.to_string(),
                message: format!(
                    "no built-in architecture `{name}` (known: {})",
                    known.join(", ")
                ),
            });
        };
        Rules::parse(text, &format!("<built-in {name}>"))
    }

    /// Every built-in preset.
    pub fn presets() -> Result<Vec<Rules>> {
        PRESETS
            .iter()
            .map(|(name, _)| Rules::preset(name))
            .collect()
    }

    /// Reads a user's rule file.
    pub fn from_file(path: &std::path::Path) -> Result<Rules> {
        let text = crate::read::read_regular(path)?;
        let mut rules = Rules::parse(&text, &path.display().to_string())?;
        rules.source = Some(path.to_path_buf());
        Ok(rules)
    }

    /// Parses a rule file; `file` names it in errors. Unknown keys are errors, and TOML errors
    /// carry the line and column.
    pub fn parse(text: &str, file: &str) -> Result<Rules> {
        let err = |message: String| Error::RuleFile {
            file: file.to_string(),
            message,
        };
        let spec: RuleFileSpec = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut tensors = Vec::with_capacity(spec.tensors.len());
        let mut seen = BTreeSet::new();
        for t in spec.tensors {
            if !seen.insert(t.name.clone()) {
                return Err(err(format!("tensor `{}` is declared twice", t.name)));
            }
            let axes = t
                .axes
                .iter()
                .map(|a| Axis::parse(a))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|m| err(format!("tensor `{}`: {m}", t.name)))?;
            let placeholders = t.name.matches("{layer}").count();
            if placeholders > 1 {
                return Err(err(format!(
                    "tensor `{}`: `{{layer}}` appears more than once",
                    t.name
                )));
            }
            if t.name.contains('{') && placeholders == 0
                || t.name.replace("{layer}", "").contains(['{', '}'])
            {
                return Err(err(format!(
                    "tensor `{}`: the only placeholder is `{{layer}}`",
                    t.name
                )));
            }
            if let Some(role) = &t.role
                && !ROLES.contains(&role.as_str())
            {
                return Err(err(format!(
                    "tensor `{}`: unknown role `{role}` (known: {})",
                    t.name,
                    ROLES.join(", ")
                )));
            }
            if t.embedding && t.head_norm {
                return Err(err(format!(
                    "tensor `{}` cannot be both an embedding and the head norm",
                    t.name
                )));
            }
            let has_hidden = axes
                .iter()
                .any(|a| matches!(a, Axis::Model { parts, .. } if parts.contains(&Space::Hidden)));
            if (t.embedding || t.head_norm) && !has_hidden {
                return Err(err(format!(
                    "tensor `{}`: `embedding` and `head_norm` need a `hidden` axis",
                    t.name
                )));
            }
            tensors.push(TensorRule {
                layered: placeholders == 1,
                template: t.name,
                axes,
                role: t.role,
                optional: t.optional,
                root: t.root,
                embedding: t.embedding,
                head_norm: t.head_norm,
                tied_to: t.tied_to,
            });
        }
        // The first rule of each name, as a linear scan would find it.
        let mut by_name = std::collections::HashMap::with_capacity(tensors.len());
        for t in &tensors {
            by_name.entry(t.template.as_str()).or_insert(t);
        }
        for t in &tensors {
            if let Some(target) = &t.tied_to {
                let Some(other) = by_name.get(target.as_str()) else {
                    return Err(err(format!(
                        "tensor `{}`: tied_to `{target}` is not a tensor of this file",
                        t.template
                    )));
                };
                if other.axes.len() != t.axes.len() || other.layered || t.layered {
                    return Err(err(format!(
                        "tensor `{}`: tied_to `{target}` must be an unlayered tensor of the same rank",
                        t.template
                    )));
                }
                if !t.optional {
                    return Err(err(format!(
                        "tensor `{}`: a tied tensor must be `optional` (tied checkpoints omit it)",
                        t.template
                    )));
                }
            }
        }
        let mut prefixes = spec.prefixes;
        if prefixes.is_empty() {
            prefixes.push(String::new());
        }
        Ok(Rules {
            name: spec.name,
            description: spec.description,
            model_types: spec.detect.model_types,
            detect_tensors: spec.detect.tensors,
            prefixes,
            config: spec.config,
            forward: spec.forward,
            tensors,
            source: None,
        })
    }

    /// The name patterns for a prefix, one per rule.
    pub(crate) fn patterns(&self, prefix: &str) -> Vec<NamePattern> {
        self.tensors.iter().map(|t| t.pattern(prefix)).collect()
    }

    /// The first rule with a role, if the file declares one (several may share a role).
    pub fn by_role(&self, role: &str) -> Option<(usize, &TensorRule)> {
        self.tensors
            .iter()
            .enumerate()
            .find(|(_, t)| t.role.as_deref() == Some(role))
    }
}
