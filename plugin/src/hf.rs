//! HuggingFace model directories: `config.json` + `model.safetensors` with HF tensor names and
//! layouts, written atomically. The models of this crate implement [`HfModel`]; the V-cycle
//! driver only needs that trait to hand a model to the transform library and take it back.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use burn::tensor::Device;
use serde_json::Value;

use crate::error::{Error, Result, io, json};

/// The weights file of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The configuration file of a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// A Burn model that reads and writes HuggingFace model directories.
pub trait HfModel: Module + Sized {
    /// The transform library's architecture preset for this model (`gpt2`, `bert`).
    fn arch() -> &'static str;

    /// Writes `config.json` and `model.safetensors` into `dir`, an existing directory.
    /// Use [`save_hf`] to write a whole directory atomically.
    fn write_hf_files(&self, dir: &Path) -> Result<()>;

    /// Builds the model at the size its `config.json` gives and loads its weights.
    fn load_hf(dir: &Path, device: &Device) -> Result<Self>;
}

/// Writes `model` as a HuggingFace directory at `dir`, atomically: the files are written into a
/// temporary sibling that is renamed into place, so `dir` appears whole or not at all. An
/// existing `dir` is replaced.
pub fn save_hf<M: HfModel>(model: &M, dir: &Path) -> Result<()> {
    write_dir_atomically(dir, |tmp| model.write_hf_files(tmp))
}

/// Fills a temporary sibling of `dir` with `fill`, flushes it to disk, then renames it to `dir`
/// (replacing an existing `dir`).
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no directory name"),
        })?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_dir_files(&tmp)) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{pid}"));
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        fs::rename(dir, &old).map_err(io(dir))?;
        fs::rename(&tmp, dir).map_err(io(dir))?;
        fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    sync_path(&parent)
}

/// Writes `bytes` to `path` atomically (temporary sibling + rename).
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    sync_path(&tmp)?;
    fs::rename(&tmp, path).map_err(io(path))?;
    sync_path(&parent)
}

fn sync_path(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Flushes every file under `dir`, subdirectories included, and the directories themselves.
fn sync_dir_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_dir() {
            sync_dir_files(&path)?;
        } else if path.is_file() {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Writes a pretty-printed JSON file.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(json(path))?;
    fs::write(path, text + "\n").map_err(io(path))
}

/// Reads a model directory's `config.json`.
pub fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(json(&path))
}

/// The first of `keys` present in `config` as an unsigned integer.
pub(crate) fn config_usize(config: &Value, dir: &Path, keys: &[&str]) -> Result<usize> {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(Value::as_u64))
        .map(|v| v as usize)
        .ok_or_else(|| Error::ModelConfig {
            path: dir.to_path_buf(),
            message: format!("needs a non-negative integer `{}`", keys.join("` or `")),
        })
}

/// The first of `keys` present in `config` as a number, or `default`.
pub(crate) fn config_f64(config: &Value, keys: &[&str], default: f64) -> f64 {
    keys.iter()
        .find_map(|k| config.get(*k).and_then(Value::as_f64))
        .unwrap_or(default)
}

/// How a model's `Linear` weights are laid out in its HF checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinearLayout {
    /// `[in, out]`, as Burn stores them (GPT-2's `Conv1D`): written as they are; norm
    /// parameters are renamed by the caller's rules.
    InOut,
    /// `[out, in]` (`torch.nn.Linear`): transposed, and norm `gamma`/`beta` renamed to
    /// `weight`/`bias`, by burn-store's PyTorch adapters.
    OutIn,
}

/// How a model's Burn module maps to its HuggingFace checkpoint: the rules of one architecture,
/// as data.
pub(crate) struct HfLayout {
    /// Burn path → HF name on export, applied in order (regex, replacement), after the layout
    /// adapter.
    pub export_names: &'static [(&'static str, &'static str)],
    /// HF name → Burn path on import, before the layout adapter.
    pub import_names: &'static [(&'static str, &'static str)],
    pub linear: LinearLayout,
    /// HF tensors a checkpoint may hold that the model does not use.
    pub may_be_unused: fn(&str) -> bool,
}

impl HfLayout {
    /// Writes `config` as `config.json` and `module` as `model.safetensors` into `dir`.
    pub fn write<M: Module>(&self, module: &M, config: &Value, dir: &Path) -> Result<()> {
        write_json(&dir.join(CONFIG_FILE), config)?;
        save_safetensors(
            module,
            &dir.join(WEIGHTS_FILE),
            self.export_names,
            self.linear,
        )
    }

    /// Loads `module`'s weights from `dir`'s `model.safetensors`.
    pub fn load<M: Module>(&self, module: &mut M, dir: &Path) -> Result<()> {
        load_safetensors(
            module,
            &dir.join(WEIGHTS_FILE),
            self.import_names,
            self.linear,
            &self.may_be_unused,
        )
    }
}

/// `TrainStep` and `InferenceStep` for a model whose method `$forward` gives the loss and the
/// outputs of a batch of type `$batch`.
macro_rules! sequence_steps {
    ($model:ty, $batch:ty, $forward:ident) => {
        impl burn::train::TrainStep for $model {
            type Input = $batch;
            type Output = burn::train::SequenceOutput;

            fn step(&self, batch: $batch) -> burn::train::TrainOutput<Self::Output> {
                let out = self.$forward(batch);
                burn::train::TrainOutput::new(self, out.loss.backward(), out)
            }
        }

        impl burn::train::InferenceStep for $model {
            type Input = $batch;
            type Output = burn::train::SequenceOutput;

            fn step(&self, batch: $batch) -> Self::Output {
                self.$forward(batch)
            }
        }
    };
}
pub(crate) use sequence_steps;

/// Saves `module` to `path` as safetensors with HF metadata (`format = pt`, which
/// `transformers` requires), renaming Burn paths with `rename` (regex, replacement; applied in
/// order, each rule seeing the previous rule's result, after the layout adapter).
fn save_safetensors<M: Module>(
    module: &M,
    path: &Path,
    rename: &[(&str, &str)],
    layout: LinearLayout,
) -> Result<()> {
    let store_error = |message: String| Error::Store {
        path: path.to_path_buf(),
        message,
    };
    let remapper = remapper(rename).map_err(store_error)?;
    let mut store = SafetensorsStore::from_file(path)
        .clear_metadata()
        .metadata("format", "pt")
        .remap(remapper)
        .overwrite(true);
    if layout == LinearLayout::OutIn {
        store = store.with_to_adapter(BurnToPyTorchAdapter);
    }
    module
        .save_into(&mut store)
        .map_err(|e| store_error(e.to_string()))
}

/// Loads `module`'s tensors from the safetensors file at `path`, whose names `rename` maps to
/// Burn paths. Every module tensor must be present with its shape; file tensors the module does
/// not use are an error unless `may_be_unused` accepts their (file) name.
fn load_safetensors<M: Module>(
    module: &mut M,
    path: &Path,
    rename: &[(&str, &str)],
    layout: LinearLayout,
    may_be_unused: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let store_error = |message: String| Error::Store {
        path: path.to_path_buf(),
        message,
    };
    let remapper = remapper(rename).map_err(store_error)?;
    let mut store = SafetensorsStore::from_file(path).remap(remapper);
    if layout == LinearLayout::OutIn {
        store = store.with_from_adapter(PyTorchToBurnAdapter);
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| store_error(e.to_string()))?;
    if !result.errors.is_empty() {
        return Err(Error::Mismatch {
            path: path.to_path_buf(),
            message: format!("{:?}", result.errors),
        });
    }
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
        return Err(Error::Mismatch {
            path: path.to_path_buf(),
            message: format!("missing tensors: {}", names.join(", ")),
        });
    }
    let unused: Vec<&String> = result
        .unused
        .iter()
        .filter(|name| !may_be_unused(name))
        .collect();
    if !unused.is_empty() {
        return Err(Error::Mismatch {
            path: path.to_path_buf(),
            message: format!(
                "tensors the model does not use: {}",
                unused
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(())
}

fn remapper(rename: &[(&str, &str)]) -> std::result::Result<KeyRemapper, String> {
    let mut remapper = KeyRemapper::new();
    for (from, to) in rename {
        remapper = remapper
            .add_pattern(*from, *to)
            .map_err(|e| format!("key pattern `{from}`: {e}"))?;
    }
    Ok(remapper)
}
