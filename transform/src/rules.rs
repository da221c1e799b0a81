//! Architecture rules as data: which tensor axis lies in which space, in which direction.
//!
//! The built-in presets (`transform/rules/*.toml`) and a user's `--rules FILE` are parsed by the
//! same code into the same [`Rules`]; nothing else in the crate knows a model's tensor names.
//! The schema is documented in docs/rule-files.md.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The built-in presets, shipped as rule files and parsed like any user's file.
pub const PRESETS: &[(&str, &str)] = &[
    ("bert", include_str!("../rules/bert.toml")),
    ("gpt2", include_str!("../rules/gpt2.toml")),
    ("llama", include_str!("../rules/llama.toml")),
    ("vit", include_str!("../rules/vit.toml")),
    ("vit-timm", include_str!("../rules/vit-timm.toml")),
];

/// A model space that width changes act on (docs/operator-contract.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The residual stream, d_model; grouped in `heads` blocks that follow the head grouping.
    Hidden,
    /// Query (and, without GQA, key/value) outputs: heads × head_dim, grouped by head.
    Attn,
    /// GQA key/value outputs: kv_heads × head_dim, grouped by kv head.
    Kv,
    /// The FFN's intermediate size, grouped in `heads` blocks that follow the head grouping.
    Ffn,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Hidden => "hidden",
            Space::Attn => "attn",
            Space::Kv => "kv",
            Space::Ffn => "ffn",
        }
    }

    fn parse(s: &str) -> Option<Space> {
        Some(match s {
            "hidden" => Space::Hidden,
            "attn" => Space::Attn,
            "kv" => Space::Kv,
            "ffn" => Space::Ffn,
            _ => return None,
        })
    }
}

/// Whether a tensor produces values in a space (`out`) or consumes them (`in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Rows of a Linear weight, biases, norm parameters, embedding columns: averaged when
    /// coalescing, duplicated when de-coalescing.
    Out,
    /// Columns of a Linear weight: summed when coalescing, split evenly when de-coalescing.
    In,
}

/// What one axis of a tensor is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Never changed by a width transformation: vocabulary, positions, classes, channels, ...
    /// `name` is the fixed space (sizes are checked for consistency across tensors); a literal
    /// size such as `1` is written as its number.
    Fixed(String),
    /// One or more model spaces concatenated along this axis (GPT-2's fused `c_attn` is
    /// `attn+attn+attn`), all in one direction.
    Model { parts: Vec<Space>, dir: Direction },
}

impl Axis {
    fn parse(text: &str) -> std::result::Result<Axis, String> {
        let Some((spaces, dir)) = text.split_once(':') else {
            if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "axis `{text}` is neither `SPACE:DIR` nor a fixed name"
                ));
            }
            if Space::parse(text).is_some() {
                return Err(format!(
                    "axis `{text}` names a model space without a direction: write `{text}:out` or `{text}:in`"
                ));
            }
            return Ok(Axis::Fixed(text.to_string()));
        };
        let dir = match dir {
            "out" => Direction::Out,
            "in" => Direction::In,
            other => {
                return Err(format!(
                    "axis `{text}`: direction `{other}` is not `out` or `in`"
                ));
            }
        };
        let parts = spaces
            .split('+')
            .map(|s| {
                Space::parse(s).ok_or_else(|| {
                    format!("axis `{text}`: `{s}` is not a model space (hidden, attn, kv, ffn)")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Axis::Model { parts, dir })
    }

    /// The axis with its direction replaced (used by the embedding rule).
    pub fn with_direction(&self, dir: Direction) -> Axis {
        match self {
            Axis::Model { parts, .. } => Axis::Model {
                parts: parts.clone(),
                dir,
            },
            fixed => fixed.clone(),
        }
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Axis::Fixed(name) => write!(f, "{name}"),
            Axis::Model { parts, dir } => {
                let names: Vec<&str> = parts.iter().map(|p| p.name()).collect();
                let dir = match dir {
                    Direction::Out => "out",
                    Direction::In => "in",
                };
                write!(f, "{}:{dir}", names.join("+"))
            }
        }
    }
}

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

/// The config.json keys that hold each size, tried in order (first present wins).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigKeys {
    #[serde(default)]
    pub hidden: Vec<String>,
    #[serde(default)]
    pub layers: Vec<String>,
    #[serde(default)]
    pub heads: Vec<String>,
    #[serde(default)]
    pub kv_heads: Vec<String>,
    #[serde(default)]
    pub ffn: Vec<String>,
    #[serde(default)]
    pub head_dim: Vec<String>,
    #[serde(default)]
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

/// One tensor rule: a name template and what each axis is.
#[derive(Debug, Clone)]
pub struct TensorRule {
    /// The name template as written, with `{layer}` for the layer index.
    pub template: String,
    pub axes: Vec<Axis>,
    /// A stable role name for the forward pass (`attn.q.weight`, `head.weight`, ...).
    pub role: Option<String>,
    pub optional: bool,
    /// The name is not under the architecture's base prefix (`lm_head.weight`, `cls.*`).
    pub root: bool,
    /// An input embedding: subject to the embedding rule.
    pub embedding: bool,
    /// The norm right before a tied output head: scaled by the group size under the exact rule.
    pub head_norm: bool,
    /// When the head is tied, this tensor is the same as the named one (absent or equal).
    pub tied_to: Option<String>,
    pub layered: bool,
}

impl TensorRule {
    /// The concrete tensor name for a prefix and layer.
    pub fn name(&self, prefix: &str, layer: Option<usize>) -> String {
        let base = match layer {
            Some(i) => self.template.replace("{layer}", &i.to_string()),
            None => self.template.clone(),
        };
        if self.root {
            base
        } else {
            format!("{prefix}{base}")
        }
    }

    fn pattern(&self, prefix: &str) -> NamePattern {
        let prefix = if self.root { "" } else { prefix };
        let (head, tail) = match self.template.split_once("{layer}") {
            Some((before, after)) => (before, Some(after.to_string())),
            None => (self.template.as_str(), None),
        };
        NamePattern {
            head: format!("{prefix}{head}"),
            tail,
        }
    }
}

/// The tensor names of one rule under one prefix: the text before `{layer}`, then a layer
/// index (`0`, or digits not starting with `0`), then the text after it; or the name itself
/// for a rule without `{layer}`. Rule files allow no other placeholder and `{layer}` once at
/// most, so a name matches literally (compiling a regular expression per rule and prefix took
/// a third of the start of a conversion).
pub(crate) struct NamePattern {
    head: String,
    /// The text after `{layer}`; None without it.
    tail: Option<String>,
}

impl NamePattern {
    /// Whether `name` is one of the pattern's names, and its layer index if it has one.
    pub(crate) fn layer_of(&self, name: &str) -> Option<Option<usize>> {
        let rest = name.strip_prefix(self.head.as_str())?;
        let Some(tail) = &self.tail else {
            return rest.is_empty().then_some(None);
        };
        let digits = rest.strip_suffix(tail.as_str())?;
        let canonical = digits == "0" || !digits.starts_with('0');
        if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Some)
    }
}

/// A parsed, validated rule file.
#[derive(Debug, Clone)]
pub struct Rules {
    pub name: String,
    pub description: String,
    pub model_types: Vec<String>,
    pub detect_tensors: Vec<String>,
    pub prefixes: Vec<String>,
    pub config: ConfigKeys,
    pub forward: Option<ForwardSpec>,
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
        for t in &tensors {
            if let Some(target) = &t.tied_to {
                let Some(other) = tensors.iter().find(|o| &o.template == target) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        for (name, _) in PRESETS {
            let rules = Rules::preset(name);
            assert!(rules.is_ok(), "{name}: {rules:?}");
        }
    }

    #[test]
    fn every_presets_detection_tensors_are_its_own_tensors() {
        for (name, _) in PRESETS {
            let rules = Rules::preset(name).unwrap_or_else(|e| panic!("{e}"));
            assert!(!rules.detect_tensors.is_empty(), "{name}");
            let patterns = rules.patterns("");
            for t in &rules.detect_tensors {
                assert!(
                    patterns.iter().any(|p| p.layer_of(t).is_some()),
                    "{name}: detection tensor `{t}` is not declared"
                );
            }
        }
    }

    #[test]
    fn axes_parse_fused_spaces_and_fixed_names() {
        assert_eq!(
            Axis::parse("attn+attn+attn:out"),
            Ok(Axis::Model {
                parts: vec![Space::Attn; 3],
                dir: Direction::Out
            })
        );
        assert_eq!(Axis::parse("vocab"), Ok(Axis::Fixed("vocab".into())));
        assert_eq!(Axis::parse("1"), Ok(Axis::Fixed("1".into())));
        assert!(Axis::parse("hidden").is_err());
        assert!(Axis::parse("hidden:sideways").is_err());
        assert!(Axis::parse("width:out").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let text = "name = \"x\"\n[[tensors]]\nname = \"a\"\naxes = [\"hidden:out\"]\nshape = 3\n";
        let err = Rules::parse(text, "custom.toml")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("custom.toml"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("shape"), "{err}");
    }

    #[test]
    fn unknown_roles_are_errors() {
        let text = "name = \"x\"\n[[tensors]]\nname = \"a\"\naxes = [\"hidden:out\"]\nrole = \"attn.qq.weight\"\n";
        let err = Rules::parse(text, "r.toml")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown role `attn.qq.weight`"), "{err}");
    }

    #[test]
    fn templates_match_layer_indices_only() {
        let rule = TensorRule {
            template: "h.{layer}.mlp.c_fc.weight".into(),
            axes: vec![],
            role: None,
            optional: false,
            root: false,
            embedding: false,
            head_norm: false,
            tied_to: None,
            layered: true,
        };
        let pattern = rule.pattern("transformer.");
        let layer = |name| pattern.layer_of(name);
        assert_eq!(layer("transformer.h.11.mlp.c_fc.weight"), Some(Some(11)));
        assert_eq!(layer("transformer.h.0.mlp.c_fc.weight"), Some(Some(0)));
        for not_one in [
            "transformer.h.01.mlp.c_fc.weight",
            "transformer.h.00.mlp.c_fc.weight",
            "transformer.h..mlp.c_fc.weight",
            "transformer.h.1a.mlp.c_fc.weight",
            "transformer.h.+1.mlp.c_fc.weight",
            "transformer.h.99999999999999999999999.mlp.c_fc.weight",
            "h.1.mlp.c_fc.weight",
            "transformer.hx1.mlp.c_fc.weight",
            "transformer.h.1.mlp.c_fc.weight.extra",
            "xtransformer.h.1.mlp.c_fc.weight",
        ] {
            assert_eq!(layer(not_one), None, "{not_one}");
        }
        let fixed = TensorRule {
            template: "wte.weight".into(),
            layered: false,
            ..rule
        };
        let pattern = fixed.pattern("transformer.");
        assert_eq!(pattern.layer_of("transformer.wte.weight"), Some(None));
        assert_eq!(pattern.layer_of("transformer.wte.weight2"), None);
        let root = TensorRule {
            root: true,
            template: "lm_head.weight".into(),
            ..fixed
        };
        assert_eq!(
            root.pattern("transformer.").layer_of("lm_head.weight"),
            Some(None)
        );
    }
}
