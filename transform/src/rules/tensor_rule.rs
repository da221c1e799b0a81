//! One tensor rule, and the tensor names it matches.

use super::Axis;

/// One tensor rule: a name template and what each axis is.
#[derive(Debug, Clone)]
pub struct TensorRule {
    /// The name template as written, with `{layer}` for the layer index.
    pub template: String,
    /// The tensor's axes, in order.
    pub axes: Vec<Axis>,
    /// A stable role name for the forward pass (`attn.q.weight`, `head.weight`, ...).
    pub role: Option<String>,
    /// The tensor may be absent.
    pub optional: bool,
    /// The name is not under the architecture's base prefix (`lm_head.weight`, `cls.*`).
    pub root: bool,
    /// An input embedding: subject to the embedding rule.
    pub embedding: bool,
    /// The norm right before a tied output head: scaled by the group size under the exact rule.
    pub head_norm: bool,
    /// When the head is tied, this tensor is the same as the named one (absent or equal).
    pub tied_to: Option<String>,
    /// The name has a `{layer}` index.
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

    /// Whether `name` is one of this rule's tensors under `prefix` (ignored for a root rule),
    /// and its layer index if the rule is per layer. A layer index is canonical decimal.
    pub fn layer_of(&self, name: &str, prefix: &str) -> Option<Option<usize>> {
        self.pattern(prefix).layer_of(name)
    }

    pub(super) fn pattern(&self, prefix: &str) -> NamePattern {
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
