//! Reading checkpoints: a `.safetensors` file, or a HuggingFace model directory with
//! `config.json` and either `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are borrowed, never copied.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::error::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Where the tensors of a checkpoint live and what else comes with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A single `.safetensors` file.
    File,
    /// A model directory: its config (if any), its safetensors files in index order (one when
    /// unsharded), and every other file in it, to be copied to the output.
    Directory {
        config: Option<Value>,
        sharded: bool,
        extra_files: Vec<PathBuf>,
    },
}

/// One tensor of a checkpoint: its dtype, shape and where its bytes are.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into the checkpoint's files.
    pub file: usize,
    start: usize,
    end: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

struct MappedFile {
    path: PathBuf,
    map: Mmap,
}

/// An opened checkpoint: tensor names mapped to their bytes in memory-mapped files.
pub struct Checkpoint {
    path: PathBuf,
    layout: Layout,
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a `.safetensors` file or a HuggingFace model directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let meta = std::fs::metadata(&path).map_err(Error::io(&path))?;
        if meta.is_dir() {
            Self::open_directory(path)
        } else {
            let mut checkpoint = Checkpoint {
                path: path.clone(),
                layout: Layout::File,
                files: Vec::new(),
                tensors: BTreeMap::new(),
                metadata: BTreeMap::new(),
            };
            checkpoint.map_file(&path)?;
            Ok(checkpoint)
        }
    }

    fn open_directory(dir: PathBuf) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(Error::io(&config_path))?;
            let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: config_path.clone(),
                source,
            })?;
            if !value.is_object() {
                return Err(Error::Config {
                    path: config_path,
                    reason: "config.json is not a JSON object".into(),
                });
            }
            Some(value)
        } else {
            None
        };

        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let (shards, weight_map) = if index_path.exists() {
            let (shards, map) = read_index(&index_path)?;
            (shards, Some(map))
        } else if single_path.exists() {
            (vec![SINGLE_FILE.to_string()], None)
        } else {
            return Err(Error::InvalidCheckpoint {
                path: dir,
                reason: format!("directory has neither {SINGLE_FILE} nor {INDEX_FILE}"),
            });
        };

        let mut extra_files = Vec::new();
        collect_extra_files(&dir, Path::new(""), &shards, &mut extra_files)?;
        extra_files.sort();

        let mut checkpoint = Checkpoint {
            path: dir.clone(),
            layout: Layout::Directory {
                config,
                sharded: weight_map.is_some(),
                extra_files,
            },
            files: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for shard in &shards {
            checkpoint.map_file(&dir.join(shard))?;
        }
        if let Some(weight_map) = weight_map {
            checkpoint.check_index(&index_path, &weight_map)?;
        }
        Ok(checkpoint)
    }

    fn map_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: the map is read-only and lives as long as `self`. Another process truncating
        // or rewriting the file while we read it could change or fault the bytes we see; that is
        // the documented contract of every mmap-based checkpoint reader (safetensors, candle),
        // and vcycle never writes to an input path (outputs inside an input are refused).
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&map).map_err(|source| Error::Safetensors {
                path: path.to_path_buf(),
                source,
            })?;
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        if file_index == 0
            && let Some(meta) = metadata.metadata()
        {
            self.metadata = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let entry = TensorInfo {
                dtype: info.dtype,
                shape: info.shape.clone(),
                file: file_index,
                start: data_start + start,
                end: data_start + end,
            };
            if self.tensors.insert(name.clone(), entry).is_some() {
                return Err(Error::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: name,
                });
            }
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    /// The index must name every tensor, each in the shard that holds it.
    fn check_index(&self, index: &Path, weight_map: &BTreeMap<String, String>) -> Result<()> {
        let names = self.file_names();
        for (tensor, info) in &self.tensors {
            let stored = names.get(info.file).map(String::as_str).unwrap_or_default();
            match weight_map.get(tensor) {
                Some(listed) if listed == stored => {}
                Some(listed) => {
                    return Err(Error::InvalidCheckpoint {
                        path: index.to_path_buf(),
                        reason: format!("tensor `{tensor}` is listed in {listed} but stored in {stored}"),
                    });
                }
                None => {
                    return Err(Error::InvalidCheckpoint {
                        path: index.to_path_buf(),
                        reason: format!("tensor `{tensor}` of {stored} is missing from weight_map"),
                    });
                }
            }
        }
        if let Some(missing) = weight_map.keys().find(|t| !self.tensors.contains_key(*t)) {
            return Err(Error::InvalidCheckpoint {
                path: index.to_path_buf(),
                reason: format!("weight_map lists `{missing}`, which no shard holds"),
            });
        }
        Ok(())
    }

    /// The path the checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The parsed `config.json`, for a directory that has one.
    pub fn config(&self) -> Option<&Value> {
        match &self.layout {
            Layout::Directory { config, .. } => config.as_ref(),
            Layout::File => None,
        }
    }

    /// Where the config lives (for error messages), whether or not it exists.
    pub fn config_path(&self) -> PathBuf {
        match &self.layout {
            Layout::Directory { .. } => self.path.join(CONFIG_FILE),
            Layout::File => self.path.clone(),
        }
    }

    /// The `__metadata__` of the (first) safetensors file.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The raw little-endian bytes of a tensor, borrowed from the memory map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        self.files.get(info.file)?.map.get(info.start..info.end)
    }

    /// A tensor decoded to f64 (float dtypes only).
    pub fn values(&self, name: &str) -> Result<Vec<f64>> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            arch: String::new(),
        })?;
        let bytes = self.bytes(name).unwrap_or_default();
        crate::dtype::decode(info.dtype, bytes).ok_or(Error::UnsupportedDtype {
            tensor: name.to_string(),
            dtype: info.dtype,
        })
    }

    /// The file a tensor is stored in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        let info = self.tensors.get(name)?;
        self.files.get(info.file).map(|f| f.path.as_path())
    }

    /// File names of the shards (or the single file), in index order.
    pub fn file_names(&self) -> Vec<String> {
        self.files
            .iter()
            .map(|f| {
                f.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Bytes of tensor data in each file (shard), in file order.
    pub fn file_data_bytes(&self) -> Vec<u64> {
        let mut sizes = vec![0u64; self.files.len()];
        for t in self.tensors.values() {
            sizes[t.file] += (t.end - t.start) as u64;
        }
        sizes
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|t| (t.end - t.start) as u64)
            .sum()
    }
}

/// Every file under `dir` that is not part of the model itself (config, index, safetensors
/// files), as paths relative to the model directory; subdirectories (sentence-transformers'
/// `1_Pooling/`) are walked. Symlinks are not followed.
fn collect_extra_files(
    root: &Path,
    relative: &Path,
    shards: &[String],
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let dir = root.join(relative);
    let entries = std::fs::read_dir(&dir).map_err(Error::io(&dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = relative.join(&name);
        let kind = entry.file_type().map_err(Error::io(entry.path()))?;
        if kind.is_dir() {
            collect_extra_files(root, &path, shards, out)?;
            continue;
        }
        let top_level = relative.as_os_str().is_empty();
        let is_model_file = top_level
            && (name == CONFIG_FILE
                || name == INDEX_FILE
                || shards.contains(&name)
                || name.ends_with(".safetensors"));
        if kind.is_file() && !is_model_file {
            out.push(path);
        }
    }
    Ok(())
}

/// The shard files listed by a `model.safetensors.index.json`, in first-appearance order of
/// the sorted weight map (so the order is deterministic).
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(map) = value.get("weight_map").and_then(Value::as_object) else {
        return Err(Error::InvalidCheckpoint {
            path: path.to_path_buf(),
            reason: "no `weight_map` object".into(),
        });
    };
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut shards: Vec<String> = Vec::new();
    let mut weight_map = BTreeMap::new();
    for (tensor, file) in entries {
        let Some(file) = file.as_str() else {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("weight_map entry `{tensor}` is not a file name"),
            });
        };
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("weight_map entry `{tensor}` points outside the directory: {file}"),
            });
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
        weight_map.insert(tensor.clone(), file.to_string());
    }
    shards.sort();
    Ok((shards, weight_map))
}
