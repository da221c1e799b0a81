//! Reading checkpoints: a `.safetensors` file, or a HuggingFace model directory with
//! `config.json` and either `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are borrowed, never copied.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use memmap2::Mmap;
use safetensors::Dtype;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
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
    released: Mutex<Released>,
}

/// Bytes consumed but still mapped, at most [`RELEASE_BATCH`] of them: unmapping is one system
/// call per range and a TLB flush on every CPU each (splitting a huge-page mapping first when
/// the range ends inside one), which per tensor cost a tenth of a bf16 coalesce's time. The
/// ranges of consecutive tensors are merged and unmapped together.
#[derive(Default)]
struct Released {
    ranges: Vec<std::ops::Range<usize>>,
    bytes: usize,
}

/// Consumed bytes a file may keep mapped before they are unmapped.
const RELEASE_BATCH: usize = 16 << 20;

impl Released {
    /// Adds a consumed `range`, merged with a pending one it touches; returns the ranges to
    /// unmap when [`RELEASE_BATCH`] bytes are pending.
    fn add(&mut self, range: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        self.bytes += range.len();
        match self
            .ranges
            .iter_mut()
            .find(|r| r.start <= range.end && range.start <= r.end)
        {
            Some(r) => *r = r.start.min(range.start)..r.end.max(range.end),
            None => self.ranges.push(range),
        }
        if self.bytes < RELEASE_BATCH {
            return Vec::new();
        }
        self.bytes = 0;
        std::mem::take(&mut self.ranges)
    }
}

impl MappedFile {
    /// Marks `range` of the file consumed; see [`Checkpoint::release`].
    fn release(&self, range: std::ops::Range<usize>) {
        let Some(ranges) = self.released.lock().ok().map(|mut r| r.add(range)) else {
            return;
        };
        for range in ranges {
            #[cfg(unix)]
            // SAFETY: the map is a read-only shared file mapping (`Mmap::map`), where
            // MADV_DONTNEED only drops page table entries: the next access faults the same
            // file pages back in, so any slice borrowed from the map keeps reading the same
            // bytes. (The UB memmap2 warns of concerns private or anonymous mappings, whose
            // contents are lost.)
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
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
        let mut visited = vec![dir.canonicalize().map_err(Error::io(&dir))?];
        collect_extra_files(&dir, Path::new(""), &shards, &mut visited, &mut extra_files)?;
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
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            map,
            released: Mutex::default(),
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

/// Reads a text file that must be a regular file (or a link to one): a FIFO or a device would
/// block or never end.
pub fn read_regular(path: &Path) -> Result<String> {
    require_regular(path, &std::fs::metadata(path).map_err(Error::io(path))?)?;
    std::fs::read_to_string(path).map_err(Error::io(path))
}

fn require_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!(
            "not a regular file (a {}): vcycle reads only regular files",
            if meta.is_dir() {
                "directory"
            } else {
                "FIFO, socket or device"
            }
        ),
    })
}

/// Every file under `dir` that is not part of the model itself (config, index, safetensors
/// files), as paths relative to the model directory; subdirectories (sentence-transformers'
/// `1_Pooling/`) are walked. Links are followed (a HuggingFace hub snapshot is links into its
/// blob store), a directory reached twice (a link loop) is refused, and so is an entry that is
/// not a regular file or directory (a FIFO would block the copy). Names need not be UTF-8.
fn collect_extra_files(
    root: &Path,
    relative: &Path,
    shards: &[String],
    visited: &mut Vec<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let dir = root.join(relative);
    let entries = std::fs::read_dir(&dir).map_err(Error::io(&dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(&dir))?;
        let name = entry.file_name();
        let path = relative.join(&name);
        let full = entry.path();
        let meta = std::fs::metadata(&full).map_err(Error::io(&full))?;
        if meta.is_dir() {
            let real = full.canonicalize().map_err(Error::io(&full))?;
            if visited.iter().any(|v| v.starts_with(&real)) {
                return Err(Error::InvalidCheckpoint {
                    path: full,
                    reason: format!("links to {}, which holds it (a link loop)", real.display()),
                });
            }
            visited.push(real);
            collect_extra_files(root, &path, shards, visited, out)?;
            continue;
        }
        let top_level = relative.as_os_str().is_empty();
        let is_model_file = top_level
            && name.to_str().is_some_and(|name| {
                name == CONFIG_FILE
                    || name == INDEX_FILE
                    || shards.iter().any(|s| s == name)
                    || name.ends_with(".safetensors")
            });
        if is_model_file {
            continue;
        }
        require_regular(&full, &meta)?;
        out.push(path);
    }
    Ok(())
}

/// The shard files listed by a `model.safetensors.index.json`, in first-appearance order of
/// the sorted weight map (so the order is deterministic).
fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
    let text = read_regular(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    // serde_json keeps the last of a repeated key: a tensor listed twice is found on the text.
    if let Ok(Json::Object(top)) = serde_json::from_str::<Json>(&text)
        && let Some((_, Json::Object(map))) = top.iter().find(|(k, _)| k == "weight_map")
    {
        let mut seen = std::collections::BTreeSet::new();
        if let Some((tensor, _)) = map.iter().find(|(name, _)| !seen.insert(name.as_str())) {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!("tensor `{tensor}` is listed more than once in weight_map"),
            });
        }
    }
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

/// Bytes of the little-endian header length that starts every safetensors file.
pub const HEADER_LEN_BYTES: usize = 8;

/// The largest header accepted (the safetensors crate's limit).
pub const MAX_HEADER_LEN: usize = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data (after the header).
    pub data_offsets: (usize, usize),
}

/// A safetensors header, checked against the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the data starts at 8 + this).
    pub header_len: usize,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    /// Tensor entries in header order.
    pub tensors: Vec<HeaderTensor>,
}

/// Parses and checks the header of a whole safetensors file.
///
/// Accepts exactly what the safetensors format allows: an 8-byte little-endian length, that
/// many bytes of UTF-8 JSON (an object of tensor entries and an optional `__metadata__` map of
/// strings), then the data, every byte of which belongs to exactly one tensor. Unlike the
/// `safetensors` crate it refuses a name that appears twice (serde's maps keep the last one
/// silently), and its error says which tensor and which field is wrong.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let Some(len_bytes) = bytes.first_chunk::<HEADER_LEN_BYTES>() else {
        return Err(format!(
            "the file is {} bytes long, too short for the 8-byte header length",
            bytes.len()
        ));
    };
    let declared = u64::from_le_bytes(*len_bytes);
    let header_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            format!("the header length {declared} exceeds the limit of {MAX_HEADER_LEN} bytes")
        })?;
    let data_start = HEADER_LEN_BYTES + header_len;
    let Some(header_bytes) = bytes.get(HEADER_LEN_BYTES..data_start) else {
        return Err(format!(
            "the header length {header_len} goes beyond the end of the file ({} bytes): the file is truncated or not safetensors",
            bytes.len()
        ));
    };
    let text = std::str::from_utf8(header_bytes).map_err(|e| {
        format!(
            "the header is not UTF-8 text (invalid byte at header offset {})",
            e.valid_up_to()
        )
    })?;
    let json: Json =
        serde_json::from_str(text).map_err(|e| format!("the header is not valid JSON: {e}"))?;
    let Json::Object(entries) = json else {
        return Err(format!(
            "the header is a JSON {}, not an object",
            json.kind()
        ));
    };

    // A repeated name first: it is what makes the rest ambiguous.
    let mut seen = std::collections::BTreeSet::new();
    if let Some((name, _)) = entries.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(if name == "__metadata__" {
            "`__metadata__` appears more than once in the header".to_string()
        } else {
            format!("tensor `{name}` appears more than once in the header")
        });
    }
    let data_len = bytes.len() - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = parse_metadata(value)?;
        } else {
            tensors.push(parse_tensor(name, value, data_len)?);
        }
    }
    check_coverage(&tensors, data_len)?;
    Ok(Header {
        header_len,
        metadata,
        tensors,
    })
}

fn parse_metadata(value: Json) -> std::result::Result<BTreeMap<String, String>, String> {
    let entries = match value {
        Json::Null => return Ok(BTreeMap::new()),
        Json::Object(entries) => entries,
        other => {
            return Err(format!(
                "`__metadata__` is a JSON {}, not an object of strings",
                other.kind()
            ));
        }
    };
    let mut metadata = BTreeMap::new();
    for (key, value) in entries {
        let Json::String(text) = value else {
            return Err(format!(
                "`__metadata__` entry `{key}` is a JSON {}, not a string",
                value.kind()
            ));
        };
        if metadata.insert(key.clone(), text).is_some() {
            return Err(format!(
                "`__metadata__` entry `{key}` appears more than once"
            ));
        }
    }
    Ok(metadata)
}

fn parse_tensor(
    name: String,
    value: Json,
    data_len: usize,
) -> std::result::Result<HeaderTensor, String> {
    let Json::Object(fields) = value else {
        return Err(format!(
            "tensor `{name}` is a JSON {}, not an object with dtype, shape and data_offsets",
            value.kind()
        ));
    };
    let mut dtype = None;
    let mut shape = None;
    let mut offsets = None;
    for (field, value) in fields {
        let slot_taken = match field.as_str() {
            "dtype" => {
                let Json::String(text) = &value else {
                    return Err(format!(
                        "tensor `{name}`: dtype is a JSON {}, not a string",
                        value.kind()
                    ));
                };
                let parsed = serde_json::from_value::<Dtype>(Value::String(text.clone()))
                    .map_err(|_| format!("tensor `{name}` has unknown dtype `{text}`"))?;
                dtype.replace(parsed).is_some()
            }
            "shape" => shape.replace(usize_list(&name, "shape", value)?).is_some(),
            "data_offsets" => {
                let list = usize_list(&name, "data_offsets", value)?;
                let [start, end] = list[..] else {
                    return Err(format!(
                        "tensor `{name}`: data_offsets has {} numbers, not 2",
                        list.len()
                    ));
                };
                offsets.replace((start, end)).is_some()
            }
            // Unknown fields are ignored, as the safetensors crate does.
            _ => false,
        };
        if slot_taken {
            return Err(format!(
                "tensor `{name}`: field `{field}` appears more than once"
            ));
        }
    }
    let missing = |field: &str| format!("tensor `{name}` has no `{field}`");
    let dtype = dtype.ok_or_else(|| missing("dtype"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;
    let (start, end) = offsets.ok_or_else(|| missing("data_offsets"))?;
    if end < start {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] end before they start"
        ));
    }
    let Some(expected) = crate::dtype::byte_len(dtype, &shape) else {
        return Err(format!(
            "tensor `{name}`: shape {shape:?} of {dtype:?} is not a whole number of bytes that fits in memory"
        ));
    };
    if end - start != expected {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] hold {} bytes, but {dtype:?} {shape:?} needs {expected}",
            end - start
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] go beyond the {data_len} bytes of data in the file (truncated?)"
        ));
    }
    Ok(HeaderTensor {
        name,
        dtype,
        shape,
        data_offsets: (start, end),
    })
}

/// A list of non-negative integers (shape, data_offsets).
fn usize_list(name: &str, field: &str, value: Json) -> std::result::Result<Vec<usize>, String> {
    let bad = |what: String| format!("tensor `{name}`: {field} {what}");
    let Json::Array(items) = value else {
        return Err(bad(format!(
            "is a JSON {}, not a list of integers",
            value.kind()
        )));
    };
    items
        .into_iter()
        .map(|item| match item {
            Json::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("holds {n}, not a non-negative integer"))),
            other => Err(bad(format!(
                "holds a JSON {}, not an integer",
                other.kind()
            ))),
        })
        .collect()
}

/// Every byte of the data belongs to exactly one tensor: sorted by offsets, the ranges start at
/// 0, touch without overlapping, and end at the end of the file.
fn check_coverage(tensors: &[HeaderTensor], data_len: usize) -> std::result::Result<(), String> {
    let mut order: Vec<&HeaderTensor> = tensors.iter().collect();
    order.sort_by_key(|t| t.data_offsets);
    let mut position = 0usize;
    let mut previous: Option<&HeaderTensor> = None;
    for t in order {
        let (start, end) = t.data_offsets;
        if start < position {
            let (ps, pe) = previous.map(|p| p.data_offsets).unwrap_or_default();
            return Err(format!(
                "tensors `{}` (data_offsets [{ps}, {pe}]) and `{}` (data_offsets [{start}, {end}]) overlap",
                previous.map(|p| p.name.as_str()).unwrap_or_default(),
                t.name
            ));
        }
        if start > position {
            return Err(match previous {
                Some(p) => format!(
                    "bytes {position}..{start} of the data, between tensors `{}` and `{}`, belong to no tensor",
                    p.name, t.name
                ),
                None => format!(
                    "bytes 0..{start} of the data, before tensor `{}`, belong to no tensor",
                    t.name
                ),
            });
        }
        position = end;
        previous = Some(t);
    }
    if position != data_len {
        return Err(format!(
            "the file holds {data_len} bytes of data but its tensors cover {position}: {} trailing bytes belong to no tensor",
            data_len - position
        ));
    }
    Ok(())
}

/// A JSON value whose objects keep every key in order, repeats included (serde_json's `Value`
/// keeps only the last of a repeated key, which would hide a duplicated tensor).
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "boolean",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "list",
            Json::Object(_) => "object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Json, E> {
        Ok(Json::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Json, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<String, Json>()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod header_tests;

#[cfg(test)]
mod tests {
    use super::{RELEASE_BATCH, Released};

    #[test]
    fn released_ranges_are_merged_and_unmapped_once_a_batch_is_pending() {
        let mut released = Released::default();
        let quarter = RELEASE_BATCH / 4;
        // Adjacent on either side, overlapping, and apart.
        assert!(released.add(quarter..2 * quarter).is_empty());
        assert!(released.add(0..quarter).is_empty());
        assert!(released.add(8 * quarter..9 * quarter - 1).is_empty());
        assert_eq!(
            released.ranges,
            [0..2 * quarter, 8 * quarter..9 * quarter - 1]
        );
        assert_eq!(
            released.add(2 * quarter - 10..3 * quarter - 9),
            [0..3 * quarter - 9, 8 * quarter..9 * quarter - 1]
        );
        // Nothing is left pending, and the count starts again.
        assert!(released.ranges.is_empty());
        let almost_a_batch = 0..RELEASE_BATCH - 1;
        assert!(released.add(almost_a_batch.clone()).is_empty());
        assert_eq!(released.add(0..1), [almost_a_batch]);
    }
}
