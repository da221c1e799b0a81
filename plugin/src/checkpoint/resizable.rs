//! Model directories (`config.json` + `model.safetensors`, as HuggingFace writes them) with the
//! names and layouts of a model's rules, written atomically. A model implements [`Resizable`];
//! the driver needs that trait to hand it to the transform library and take it back.

use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use vcycle_transform::ArchChoice;

use crate::checkpoint::files::write_dir_atomically;
use crate::checkpoint::layout::CheckpointLayout;
use crate::checkpoint::sizes::Sizes;
use crate::error::Result;

/// A Burn model the transform library can resize: its rules describe its checkpoints, model
/// directories holding `config.json` (the [`Sizes`], under the rules' keys) and
/// `model.safetensors` (the module's tensors, named and laid out as the rules say; see
/// [`CheckpointLayout`]).
///
/// A model implements four things: its rules, its sizes, a model like itself at other sizes
/// and, where its Burn paths differ from the rules' names, renames. Saving and loading follow.
/// The rules and the hyperparameters that are not sizes come from the model's value, so a
/// model can carry a rule file chosen at run time and keeps its own settings at every size.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::Device;
/// use vcycle_plugin::{ArchChoice, Resizable, Result, Rules, Sizes};
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
/// impl Resizable for Probe {
///     fn arch(&self) -> Result<ArchChoice> {
///         Ok(ArchChoice::Rules(Box::new(Rules::parse(RULES, "probe.toml")?)))
///     }
///     fn sizes(&self) -> Sizes {
///         self.sizes.clone()
///     }
///     fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self> {
///         let layer = || LinearConfig::new(sizes.dims.hidden, sizes.dims.hidden).init(device);
///         let layers = (0..sizes.dims.layers).map(|_| layer()).collect();
///         Ok(Probe { layers, sizes: sizes.clone() })
///     }
/// }
///
/// let device = Device::flex();
/// let dir = std::env::temp_dir().join(format!("vcycle-probe-{}", std::process::id()));
/// let model = Probe { layers: Vec::new(), sizes: Sizes::new(0, 8, 2, 0) }
///     .resized(&Sizes::new(2, 8, 2, 0), &device)?;
/// model.save_dir(&dir)?;
/// let back = model.load_dir(&dir, &device)?;
/// assert_eq!((back.sizes.dims.layers, back.sizes.dims.hidden, back.sizes.dims.heads), (2, 8, 2));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), vcycle_plugin::Error>(())
/// ```
pub trait Resizable: Module + Sized {
    /// The rules: a built-in preset (`ArchChoice::Preset("gpt2".into())`) or a rule file
    /// (`ArchChoice::Rules`, e.g. from [`Rules::parse`](crate::Rules::parse)).
    fn arch(&self) -> Result<ArchChoice>;

    /// Renames from Burn paths to the rules' names, `(regex, replacement)` in order, after
    /// burn-store's adapter (see [`CheckpointLayout`]). None by default: the rules name the
    /// tensors as Burn does.
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[]
    }

    /// This model's sizes (what `config.json` records).
    fn sizes(&self) -> Sizes;

    /// A freshly initialised model like this one (its rules, its hyperparameters) at `sizes`;
    /// its weights are then loaded or left as initialised.
    fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self>;

    /// The model's checkpoint layout.
    fn layout(&self) -> Result<CheckpointLayout> {
        Ok(CheckpointLayout::new(&self.arch()?)?.with_renames(Self::renames()))
    }

    /// Writes `config.json` and `model.safetensors` into `dir`, an existing directory.
    /// [`Resizable::save_dir`] writes a whole directory atomically.
    fn write_files(&self, dir: &Path) -> Result<()> {
        self.layout()?.write(self, &self.sizes(), dir)
    }

    /// Writes this model as a model directory at `dir`, atomically: the files are written into
    /// a temporary sibling that is renamed into place, so `dir` appears whole or not at all. An
    /// existing `dir` is replaced.
    fn save_dir(&self, dir: &Path) -> Result<()> {
        write_dir_atomically(dir, |tmp| self.write_files(tmp))
    }

    /// A model like this one with the sizes and weights of the model directory at `dir`.
    fn load_dir(&self, dir: &Path, device: &Device) -> Result<Self> {
        self.layout()?
            .load_model(dir, |sizes| self.resized(sizes, device))
    }
}
