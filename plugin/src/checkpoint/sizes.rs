//! A model's sizes as its rule file defines them: what the transform library's anatomy reads
//! from a checkpoint, what a model is built from, and what `config.json` records.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use vcycle_transform::config::lookup;
use vcycle_transform::rules::{Rules, Space};
use vcycle_transform::{ArchChoice, Dims};

use crate::error::{Error, Result};

/// The sizes of a model, in the terms of its rule file: the transform library's [`Dims`]
/// (layers, widths, heads, the fixed spaces such as `vocab`), the norm ε and the `config.json`
/// entries that are not sizes.
///
/// A checkpoint's sizes come from its tensors and `config.json` through its rules; a model is
/// built from them by [`crate::Resizable::resized`] and reports them with
/// [`crate::Resizable::sizes`], which is what `config.json` records.
///
/// ```
/// use vcycle_plugin::Sizes;
///
/// let sizes = Sizes::new(2, 64, 4, 128).with_fixed("vocab", 256).with_fixed("positions", 32);
/// assert_eq!(sizes.dims.head_dim, 16);
/// assert_eq!(sizes.fixed("vocab")?, 256);
/// assert!(sizes.fixed("token_types").is_err());
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    /// Layers, widths, heads, whether the head is tied, and the fixed spaces (`vocab`,
    /// `positions`, …), as the transform library reads them from a checkpoint.
    pub dims: Dims,
    /// The norm ε, where the rules name a `config.json` key or a default for it.
    pub norm_eps: Option<f64>,
    /// `config.json` entries beyond the sizes (a model's dropout, `architectures`, …): written
    /// as they are, and read back whole.
    pub settings: Map<String, Value>,
}

impl Sizes {
    /// `layers` layers of width `hidden` with `heads` heads (no grouped-query attention, head
    /// size `hidden / heads`) and an MLP of width `ffn`; tied head, no fixed spaces yet.
    pub fn new(layers: usize, hidden: usize, heads: usize, ffn: usize) -> Self {
        Sizes {
            dims: Dims {
                layers,
                hidden,
                heads,
                kv_heads: heads,
                head_dim: hidden.checked_div(heads).unwrap_or(0),
                ffn,
                tied: true,
                fixed: BTreeMap::new(),
            },
            norm_eps: None,
            settings: Map::new(),
        }
    }

    /// Sets the size of a fixed space (`vocab`, `positions`, …).
    pub fn with_fixed(mut self, space: &str, size: usize) -> Self {
        self.dims.fixed.insert(space.to_string(), size);
        self
    }

    /// Sets the number of key/value heads (grouped-query attention).
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.dims.kv_heads = kv_heads;
        self
    }

    /// Sets the head size (when it is not `hidden / heads`).
    pub fn with_head_dim(mut self, head_dim: usize) -> Self {
        self.dims.head_dim = head_dim;
        self
    }

    /// Sets whether the output head is tied to the token embedding.
    pub fn with_tied(mut self, tied: bool) -> Self {
        self.dims.tied = tied;
        self
    }

    /// Sets the norm ε.
    pub fn with_norm_eps(mut self, eps: f64) -> Self {
        self.norm_eps = Some(eps);
        self
    }

    /// Sets a `config.json` entry that is not a size.
    pub fn with_setting(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.settings.insert(key.to_string(), value.into());
        self
    }

    /// The size of a fixed space; an error names the space and the spaces there are.
    pub fn fixed(&self, space: &str) -> Result<usize> {
        self.dims.fixed.get(space).copied().ok_or_else(|| {
            let known: Vec<&str> = self.dims.fixed.keys().map(String::as_str).collect();
            Error::Sizes(format!(
                "no fixed space `{space}` (the rules give: {})",
                known.join(", ")
            ))
        })
    }

    /// A numeric setting, or `default` when `config.json` has none.
    pub fn setting_f64(&self, key: &str, default: f64) -> f64 {
        self.settings
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or(default)
    }

    /// The width of the query heads together (the rules' `attn` space).
    pub fn attn(&self) -> usize {
        self.dims.space(Space::Attn)
    }

    /// The sizes of the checkpoint at `dir` according to `rules`.
    pub(crate) fn read(dir: &Path, rules: &Rules) -> Result<Sizes> {
        let arch = ArchChoice::Rules(Box::new(rules.clone()));
        let (checkpoint, anatomy) = vcycle_transform::open_model(dir, &arch)?;
        let config = checkpoint.config();
        let norm_eps = config
            .and_then(|c| rules.config.norm_eps.iter().find_map(|k| lookup(c, k)))
            .and_then(Value::as_f64)
            .or_else(|| rules.forward.as_ref().and_then(|f| f.norm_eps));
        let settings = config
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Sizes {
            dims: anatomy.dims,
            norm_eps,
            settings,
        })
    }

    /// `config.json` for these sizes, as the transform library composes it.
    pub(crate) fn config_json(&self, rules: &Rules) -> Value {
        vcycle_transform::config::compose(&self.settings, rules, &self.dims, self.norm_eps)
    }
}
