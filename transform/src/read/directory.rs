//! The files of a model directory: its shard index, the extra files copied to the output, and
//! the check that every file read is a regular file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::json::Json;
use super::{CONFIG_FILE, INDEX_FILE};
use crate::error::{Error, Result};

/// The largest small file read whole (`config.json`, `model.safetensors.index.json`, a rule
/// file): real ones are at most a few megabytes (the index of a model with 100,000 tensors is
/// about 7 MB).
pub const MAX_SMALL_FILE: u64 = 64 << 20;

/// Reads a text file that must be a regular file (or a link to one; a FIFO or a device would
/// block or never end) of at most [`MAX_SMALL_FILE`] bytes.
pub fn read_regular(path: &Path) -> Result<String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    require_regular(path, &meta)?;
    let too_large = || Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("larger than {MAX_SMALL_FILE} bytes, the most vcycle reads of such a file"),
    };
    if meta.len() > MAX_SMALL_FILE {
        return Err(too_large());
    }
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut text = String::new();
    // Bounded again while reading: the file may grow after its size was read.
    file.take(MAX_SMALL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(Error::io(path))?;
    if text.len() as u64 > MAX_SMALL_FILE {
        return Err(too_large());
    }
    Ok(text)
}

pub(super) fn require_regular(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
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
/// blob store), a link to a directory that holds it (a link loop) is refused, and so is an
/// entry that is not a regular file or directory (a FIFO would block the copy). Names need not
/// be UTF-8. `ancestors`: the real paths of the directories being walked, `root`'s first.
pub(super) fn collect_extra_files(
    root: &Path,
    relative: &Path,
    shards: &[String],
    ancestors: &mut Vec<PathBuf>,
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
            // Two links to one directory are no loop; a link to a directory that holds it is.
            if ancestors.iter().any(|v| v.starts_with(&real)) {
                return Err(Error::InvalidCheckpoint {
                    path: full,
                    reason: format!("links to {}, which holds it (a link loop)", real.display()),
                });
            }
            ancestors.push(real);
            let walked = collect_extra_files(root, &path, shards, ancestors, out);
            ancestors.pop();
            walked?;
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
pub(super) fn read_index(path: &Path) -> Result<(Vec<String>, BTreeMap<String, String>)> {
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
