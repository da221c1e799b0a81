//! Model directories (`config.json` + `model.safetensors`, as HuggingFace writes them) with the
//! names and layouts of a model's rules, written atomically. A model implements [`HfModel`];
//! the V-cycle driver needs that trait to hand it to the transform library and take it back.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use vcycle_transform::ArchChoice;

use crate::checkpoint::files::write_dir_atomically;
use crate::checkpoint::layout::HfLayout;
use crate::checkpoint::sizes::Sizes;
use crate::error::Result;

/// A Burn model whose checkpoints are model directories its architecture's rules describe:
/// `config.json` (the [`Sizes`], under the rules' keys) and `model.safetensors` (the module's
/// tensors, named and laid out as the rules say; see [`HfLayout`]).
///
/// A model implements four things: its architecture, its sizes, a constructor from sizes and,
/// where its Burn paths differ from the rules' names, renames. Saving and loading follow.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::Device;
/// use vcycle_plugin::{ArchChoice, HfModel, Result, Rules, Sizes};
///
/// const RULES: &str = r#"
/// name = "probe"
/// [config]
/// hidden = ["d"]
/// layers = ["n"]
/// heads = ["h"]
/// [[tensors]]
/// name = "layers.{layer}.weight"
/// axes = ["hidden:in", "hidden:out"]
/// [[tensors]]
/// name = "layers.{layer}.bias"
/// axes = ["hidden:out"]
/// "#;
///
/// #[derive(Module, Debug)]
/// struct Probe {
///     layers: Vec<Linear>,
///     #[module(skip)]
///     sizes: Sizes,
/// }
///
/// impl HfModel for Probe {
///     fn arch() -> Result<ArchChoice> {
///         Ok(ArchChoice::Rules(Box::new(Rules::parse(RULES, "probe.toml")?)))
///     }
///     fn sizes(&self) -> Sizes {
///         self.sizes.clone()
///     }
///     fn from_sizes(sizes: &Sizes, device: &Device) -> Result<Self> {
///         let layer = || LinearConfig::new(sizes.hidden, sizes.hidden).init(device);
///         let layers = (0..sizes.layers).map(|_| layer()).collect();
///         Ok(Probe { layers, sizes: sizes.clone() })
///     }
/// }
///
/// let dir = std::env::temp_dir().join(format!("vcycle-probe-{}", std::process::id()));
/// let model = Probe::from_sizes(&Sizes::new(2, 8, 2, 0), &Device::flex())?;
/// vcycle_plugin::save_hf(&model, &dir)?;
/// let back = Probe::load_hf(&dir, &Device::flex())?;
/// assert_eq!((back.sizes.layers, back.sizes.hidden, back.sizes.heads), (2, 8, 2));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
pub trait HfModel: Module + Sized {
    /// The architecture: a built-in preset (`ArchChoice::Preset("gpt2".into())`) or a rule
    /// file (`ArchChoice::Rules`, e.g. from [`Rules::parse`](crate::Rules::parse)).
    fn arch() -> Result<ArchChoice>;

    /// Renames from Burn paths to the rules' names, `(regex, replacement)` in order, after
    /// burn-store's adapter (see [`HfLayout`]). None by default: the rules name the tensors
    /// as Burn does.
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// This model's sizes (what `config.json` records).
    fn sizes(&self) -> Sizes;

    /// A model of these sizes; its weights are then loaded or left as initialised.
    fn from_sizes(sizes: &Sizes, device: &Device) -> Result<Self>;

    /// The model's checkpoint layout.
    fn layout() -> Result<HfLayout> {
        Ok(HfLayout::new(&Self::arch()?)?.with_renames(Self::renames()))
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, an existing directory.
    /// Use [`save_hf`] to write a whole directory atomically.
    fn write_hf_files(&self, dir: &Path) -> Result<()> {
        Self::layout()?.write(self, &self.sizes(), dir)
    }

    /// Builds the model at the sizes the rules read from `dir` and loads its weights.
    fn load_hf(dir: &Path, device: &Device) -> Result<Self> {
        let layout = Self::layout()?;
        let sizes = layout.read_sizes(dir)?;
        let mut model = Self::from_sizes(&sizes, device)?;
        layout.load(&mut model, dir, &sizes)?;
        Ok(model)
    }
}

/// Writes `model` as a model directory at `dir`, atomically: the files are written into a
/// temporary sibling that is renamed into place, so `dir` appears whole or not at all. An
/// existing `dir` is replaced.
pub fn save_hf<M: HfModel>(model: &M, dir: &Path) -> Result<()> {
    write_dir_atomically(dir, |tmp| model.write_hf_files(tmp))
}
