//! Reading checkpoints: a `.safetensors` file, or a HuggingFace model directory with
//! `config.json` and either `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are borrowed, never copied.
//!
//! This file opens a checkpoint; the parts are in `directory.rs` (a model directory's files),
//! `mapped_file.rs` (a mapped file and the release of its pages), `header.rs` (the safetensors
//! header parser) and `json.rs` (the JSON it reads).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::Dtype;
use serde_json::Value;

use crate::error::{Error, Result};

mod directory;
mod header;
mod json;
mod mapped_file;
mod prefetch;

pub use directory::{MAX_SMALL_FILE, read_regular};
use directory::{collect_extra_files, read_index, require_regular};
pub use header::{HEADER_LEN_BYTES, Header, HeaderTensor, MAX_HEADER_LEN, parse_header};
use mapped_file::MappedFile;
pub use prefetch::Prefetch;

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
    /// The element type.
    pub dtype: Dtype,
    /// The shape.
    pub shape: Vec<usize>,
    /// Index into the checkpoint's files.
    pub file: usize,
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
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
            require_regular(&path, &meta)?;
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
            let text = read_regular(&config_path)?;
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
        let mut ancestors = vec![dir.canonicalize().map_err(Error::io(&dir))?];
        collect_extra_files(
            &dir,
            Path::new(""),
            &shards,
            &mut ancestors,
            &mut extra_files,
        )?;
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
        require_regular(path, &std::fs::metadata(path).map_err(Error::io(path))?)?;
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: `Mmap::map` is unsafe because the mapped bytes can change underneath us if
        // another process writes to or truncates the file while it is mapped. The map is
        // read-only, private to this `Checkpoint` and dropped with it, and every tensor is read
        // through a bounds-checked `get(start..end)` against the map's length at mapping time
        // (`bytes`), so a concurrent *rewrite* can only change the values we read. A concurrent
        // *truncation* can make the kernel raise SIGBUS on access to the lost pages; that is
        // the documented contract of every mmap-based checkpoint reader (safetensors, candle),
        // and vcycle never writes to an input path (outputs equal to, inside or around an input
        // are refused, symlinks resolved).
        let map = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        let header = parse_header(&map).map_err(|reason| Error::InvalidSafetensors {
            path: path.to_path_buf(),
            reason,
        })?;
        let data_start = HEADER_LEN_BYTES + header.header_len;
        let file_index = self.files.len();
        if file_index == 0 {
            self.metadata = header.metadata;
        }
        for t in header.tensors {
            let (start, end) = t.data_offsets;
            let entry = TensorInfo {
                dtype: t.dtype,
                shape: t.shape,
                file: file_index,
                // parse_header checked end <= the file length - data_start.
                start: data_start + start,
                end: data_start + end,
            };
            if self.tensors.insert(t.name.clone(), entry).is_some() {
                return Err(Error::DuplicateTensor {
                    path: path.to_path_buf(),
                    tensor: t.name,
                });
            }
        }
        self.files.push(MappedFile::new(path.to_path_buf(), map));
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
                        reason: format!(
                            "tensor `{tensor}` is listed in {listed} but stored in {stored}"
                        ),
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

    /// Every path reading the checkpoint touches: the path it was opened from, its config,
    /// index, safetensors and extra files (which may be links elsewhere).
    pub fn paths_read(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.path.clone()];
        paths.extend(self.files.iter().map(|f| f.path.clone()));
        if let Layout::Directory { extra_files, .. } = &self.layout {
            paths.extend(extra_files.iter().map(|f| self.path.join(f)));
            for name in [CONFIG_FILE, INDEX_FILE] {
                let path = self.path.join(name);
                if path.exists() {
                    paths.push(path);
                }
            }
        }
        paths
    }

    /// The path the checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A single file, or a directory with its config and files.
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

    /// The tensor named `name`, if the checkpoint holds it.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// The raw little-endian bytes of a tensor, borrowed from the memory map.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        self.files.get(info.file)?.map.get(info.start..info.end)
    }

    /// Unmaps the pages of a tensor's bytes in `range` (relative to the tensor) once they are
    /// consumed. Touched pages of a file mapping count in the process's resident memory until
    /// unmapped, so without this a conversion's peak memory would grow with the model. The
    /// pages stay in the page cache; a later read maps them again. Batched: up to 16 MB of a
    /// file may stay mapped until more is released. Best effort: a failure only leaves the
    /// pages mapped.
    pub fn release(&self, name: &str, range: std::ops::Range<usize>) {
        let Some(info) = self.tensors.get(name) else {
            return;
        };
        let Some(file) = self.files.get(info.file) else {
            return;
        };
        let start = info.start.saturating_add(range.start).min(info.end);
        let end = info.start.saturating_add(range.end).min(info.end);
        if end > start {
            file.release(start..end);
        }
    }

    /// Releases a whole tensor's pages; see [`Checkpoint::release`].
    pub fn release_all(&self, name: &str) {
        self.release(name, 0..usize::MAX);
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
            if let Some(size) = sizes.get_mut(t.file) {
                *size += (t.end - t.start) as u64;
            }
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

#[cfg(test)]
mod header_tests;
