//! How a Burn module maps to a checkpoint its rule file describes: tensor names and Linear
//! layouts derived from the rules, carried out by burn-store's key remapper and adapters.

use std::path::Path;

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use vcycle_transform::ArchChoice;
use vcycle_transform::rules::{Axis, Direction, Rules};

use crate::checkpoint::files::{CONFIG_FILE, WEIGHTS_FILE, write_json};
use crate::checkpoint::sizes::Sizes;
use crate::error::{Error, Result};

/// The checkpoint layout of one architecture, built from its rules (a preset or a rule file).
///
/// - *Names.* A module tensor's checkpoint name is its Burn path, after the layout adapter and
///   the model's renames, under the rules' first prefix unless its rule is `root`. Every name
///   must match a rule. Import maps each checkpoint name back through the same table, under any
///   of the rules' prefixes.
/// - *Linear layout.* When the rules' Linear weights (2-D, one `in` and one `out` model axis)
///   are `[out, in]`, burn-store's PyTorch adapters transpose them and rename norm
///   `gamma`/`beta` to `weight`/`bias`; when they are `[in, out]`, Burn's own layout, tensors
///   are written as they are.
/// - *Unused tensors.* A checkpoint may hold tensors the model lacks only where an optional
///   rule claims them (a tied head only while the head is tied).
///
/// ```
/// use vcycle_plugin::CheckpointLayout;
/// use vcycle_transform::ArchChoice;
///
/// let layout = CheckpointLayout::new(&ArchChoice::Preset("bert".into()))?
///     .with_renames(&[(r"\.layer_norm\.", ".LayerNorm.")]);
/// assert_eq!(layout.rules().name, "bert");
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointLayout {
    rules: Rules,
    /// The checkpoint stores Linear weights `[out, in]`.
    transposed: bool,
    /// Burn path → rule name (regex, replacement), in order, after the adapter.
    renames: Vec<(String, String)>,
}

/// One module tensor: its name after the export adapter, and as its rule names it (without
/// the prefix).
struct Named {
    adapted: String,
    base: String,
    shape: Vec<usize>,
    rule: usize,
}

impl CheckpointLayout {
    /// The layout of a preset or a rule file. [`ArchChoice::Detect`] is refused: a model
    /// names its architecture.
    pub fn new(arch: &ArchChoice) -> Result<Self> {
        let rules = match arch {
            ArchChoice::Preset(name) => Rules::preset(name)?,
            ArchChoice::Rules(rules) => (**rules).clone(),
            ArchChoice::Detect => {
                return Err(Error::Rules {
                    arch: "detect".into(),
                    message: "a model names its architecture: a preset or a rule file".into(),
                });
            }
        };
        if rules.config.heads.is_empty() {
            return Err(Error::Rules {
                arch: rules.name,
                message: "[config] names no `heads` key, so config.json cannot record the heads"
                    .into(),
            });
        }
        let transposed = linear_layout(&rules)?;
        Ok(CheckpointLayout {
            rules,
            transposed,
            renames: Vec::new(),
        })
    }

    /// Adds renames from Burn paths to the rules' names: `(regex, replacement)`, applied in
    /// order after the layout adapter, each seeing the previous one's result.
    pub fn with_renames(mut self, renames: &[(&str, &str)]) -> Self {
        self.renames
            .extend(renames.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        self
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The sizes of the checkpoint directory `dir` (the transform library's anatomy).
    pub fn read_sizes(&self, dir: &Path) -> Result<Sizes> {
        Sizes::read(dir, &self.rules)
    }

    /// Writes `sizes` as `config.json` and `module` as `model.safetensors` (metadata
    /// `format = pt`, which `transformers` requires) into the existing directory `dir`.
    pub fn write<M: Module>(&self, module: &M, sizes: &Sizes, dir: &Path) -> Result<()> {
        write_json(&dir.join(CONFIG_FILE), &sizes.config_json(&self.rules))?;
        let path = dir.join(WEIGHTS_FILE);
        let table = self.names(module)?;
        let prefix = self.rules.prefixes.first().map_or("", String::as_str);
        let remapper = self.remapper(table.iter().map(|n| {
            (
                exact(&n.adapted),
                self.stored_name(n, prefix).replace('$', "$$"),
            )
        }))?;
        let mut store = SafetensorsStore::from_file(&path)
            .clear_metadata()
            .metadata("format", "pt")
            .remap(remapper)
            .overwrite(true);
        if self.transposed {
            store = store.with_to_adapter(BurnToPyTorchAdapter);
        }
        module.save_into(&mut store).map_err(store_error(&path))
    }

    /// The model `build` makes at the sizes of the checkpoint directory `dir`, with its weights.
    pub fn load_model<M: Module>(
        &self,
        dir: &Path,
        build: impl FnOnce(&Sizes) -> Result<M>,
    ) -> Result<M> {
        let sizes = self.read_sizes(dir)?;
        let mut model = build(&sizes)?;
        self.load(&mut model, dir, &sizes)?;
        Ok(model)
    }

    /// Loads `module`'s weights from `dir`'s `model.safetensors`; `sizes` are the checkpoint's.
    /// Every module tensor must be present with its shape.
    pub fn load<M: Module>(&self, module: &mut M, dir: &Path, sizes: &Sizes) -> Result<()> {
        let path = dir.join(WEIGHTS_FILE);
        let table = self.names(module)?;
        let mut pairs = Vec::new();
        for prefix in &self.rules.prefixes {
            for n in &table {
                pairs.push((
                    exact(&self.stored_name(n, prefix)),
                    n.adapted.replace('$', "$$"),
                ));
            }
        }
        pairs.sort();
        pairs.dedup();
        let mut store = SafetensorsStore::from_file(&path).remap(self.remapper(pairs)?);
        if self.transposed {
            store = store.with_from_adapter(PyTorchToBurnAdapter);
        }
        let result = module.load_from(&mut store).map_err(store_error(&path))?;
        let mismatch = |message: String| Error::Mismatch {
            path: path.clone(),
            message,
        };
        if !result.errors.is_empty() {
            return Err(mismatch(format!("{:?}", result.errors)));
        }
        if !result.missing.is_empty() {
            let names: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
            return Err(mismatch(format!("missing tensors: {}", names.join(", "))));
        }
        let unused: Vec<&str> = result
            .unused
            .iter()
            .filter(|name| !self.may_be_unused(name, sizes.dims.tied))
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            return Err(mismatch(format!(
                "tensors the model does not use: {}",
                unused.join(", ")
            )));
        }
        Ok(())
    }

    /// A key remapper from `(pattern, replacement)` pairs.
    fn remapper(&self, pairs: impl IntoIterator<Item = (String, String)>) -> Result<KeyRemapper> {
        pairs
            .into_iter()
            .try_fold(KeyRemapper::new(), |remapper, (from, to)| {
                remapper
                    .add_pattern(from.as_str(), to)
                    .map_err(|source| Error::Pattern {
                        arch: self.rules.name.clone(),
                        pattern: from,
                        source,
                    })
            })
    }

    /// Every module tensor with its rule and the rule's name for it.
    fn names<M: Module>(&self, module: &M) -> Result<Vec<Named>> {
        let adapter: Option<Box<dyn ModuleAdapter>> = if self.transposed {
            Some(Box::new(BurnToPyTorchAdapter))
        } else {
            None
        };
        let tensors = module.collect(None, adapter, false);
        let adapted: Vec<(String, Vec<usize>)> = tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.to_vec()))
            .collect();
        let renames = self.remapper(self.renames.iter().cloned())?;
        let (renamed, _) = renames.remap(tensors);
        adapted
            .into_iter()
            .zip(renamed)
            .map(|((adapted, shape), renamed)| {
                let rule = self
                    .rule_of(&renamed.name, "")
                    .ok_or_else(|| Error::Layout {
                        arch: self.rules.name.clone(),
                        tensor: renamed.name.clone(),
                        message: format!(
                            "no rule names it (Burn path `{adapted}`): add a rule or a rename"
                        ),
                    })?;
                Ok(Named {
                    base: renamed.name,
                    adapted,
                    shape,
                    rule,
                })
            })
            .collect()
    }

    /// A tensor's checkpoint name under `prefix` (a root rule's names take none).
    fn stored_name(&self, tensor: &Named, prefix: &str) -> String {
        if self.rules.tensors.get(tensor.rule).is_some_and(|r| r.root) {
            tensor.base.clone()
        } else {
            format!("{prefix}{}", tensor.base)
        }
    }

    /// The rule whose template names `name` under `prefix` (a root rule without it).
    fn rule_of(&self, name: &str, prefix: &str) -> Option<usize> {
        self.rules
            .tensors
            .iter()
            .position(|rule| rule.layer_of(name, prefix).is_some())
    }

    /// Whether a checkpoint tensor the model does not hold may be left out: an optional rule
    /// claims it, and a tied copy only while the head is tied.
    fn may_be_unused(&self, name: &str, tied: bool) -> bool {
        self.rules.prefixes.iter().any(|prefix| {
            self.rule_of(name, prefix)
                .and_then(|i| self.rules.tensors.get(i))
                .is_some_and(|rule| rule.optional && (rule.tied_to.is_none() || tied))
        })
    }

    /// Multiply-adds per token of the module's matrix products: every 2-D tensor claimed by a
    /// rule that is not an embedding, plus a tied output head, which the module does not hold.
    pub(crate) fn matmul_weights<M: Module>(&self, module: &M, sizes: &Sizes) -> Result<usize> {
        let table = self.names(module)?;
        let held: usize = table
            .iter()
            .filter(|n| n.shape.len() == 2)
            .filter(|n| self.rules.tensors.get(n.rule).is_some_and(|r| !r.embedding))
            .map(|n| n.shape.iter().product::<usize>())
            .sum();
        let dims = &sizes.dims;
        let tied_head = self
            .rules
            .tensors
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                sizes.dims.tied && r.tied_to.is_some() && table.iter().all(|n| n.rule != *i)
            })
            .map(|(_, r)| {
                r.axes
                    .iter()
                    .map(|axis| dims.axis(axis).unwrap_or(0))
                    .product::<usize>()
            })
            .sum::<usize>();
        Ok(held + tied_head)
    }
}

/// Whether the rules' Linear weights are `[out, in]` (true) or `[in, out]` (false, Burn's).
/// burn-store's adapters transpose every Linear weight or none, so the rules may not mix them.
fn linear_layout(rules: &Rules) -> Result<bool> {
    let mut found: Option<(bool, &str)> = None;
    for rule in &rules.tensors {
        let dirs: Vec<Direction> = rule
            .axes
            .iter()
            .filter_map(|axis| match axis {
                Axis::Model { dir, .. } => Some(*dir),
                Axis::Fixed(_) => None,
            })
            .collect();
        let out_in = match (rule.axes.len(), dirs.as_slice()) {
            (2, [Direction::Out, Direction::In]) => true,
            (2, [Direction::In, Direction::Out]) => false,
            _ => continue,
        };
        match found {
            Some((first, first_rule)) if first != out_in => {
                return Err(Error::Layout {
                    arch: rules.name.clone(),
                    tensor: rule.template.clone(),
                    message: format!(
                        "its Linear layout differs from `{first_rule}`'s: Burn's adapters \
                         transpose every Linear weight or none"
                    ),
                });
            }
            Some(_) => {}
            None => found = Some((out_in, &rule.template)),
        }
    }
    Ok(found.is_some_and(|(out_in, _)| out_in))
}

/// A regex matching exactly `name`.
fn exact(name: &str) -> String {
    format!("^{}$", regex::escape(name))
}

fn store_error(path: &Path) -> impl FnOnce(burn::store::SafetensorsStoreError) -> Error + '_ {
    move |source| Error::Store {
        path: path.to_path_buf(),
        source,
    }
}
