//! Writing outputs atomically and deterministically: a `.safetensors` file, or a model
//! directory (config.json, the model file or shards with an index, copied extra files).
//!
//! Every output is written into a temporary sibling and renamed into place only when complete,
//! so an output appears whole or not at all and an existing one is never half overwritten.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::plan::TensorPlan;
use crate::read::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE};

/// The form of the output.
#[derive(Debug, Clone)]
pub enum OutputForm {
    File,
    Directory {
        /// The rewritten config.json, if the input had one.
        config: Option<Value>,
        /// Files copied unchanged: (source path, file name).
        extra_files: Vec<(PathBuf, PathBuf)>,
        /// Maximum bytes of tensor data per shard; None writes a single `model.safetensors`.
        shard_size: Option<u64>,
    },
}

/// Refuses an output that is, or is inside, or contains, one of the inputs, and an existing
/// output without `force`. Symlinks are resolved.
pub fn check_output_path(inputs: &[&Path], output: &Path, force: bool) -> Result<()> {
    let refuse = |reason: String| Error::Output {
        output: output.to_path_buf(),
        reason,
    };
    let resolved = resolve(output).map_err(|e| refuse(format!("cannot be resolved: {e}")))?;
    for input in inputs {
        let input = input
            .canonicalize()
            .map_err(|e| refuse(format!("cannot resolve input {}: {e}", input.display())))?;
        if resolved == input {
            return Err(refuse(format!("is the input {}", input.display())));
        }
        if resolved.starts_with(&input) {
            return Err(refuse(format!("is inside the input {}", input.display())));
        }
        if input.starts_with(&resolved) {
            return Err(refuse(format!(
                "contains the input {}, which replacing it would delete",
                input.display()
            )));
        }
    }
    if output.symlink_metadata().is_ok() && !force {
        return Err(refuse("already exists (pass --force to replace it)".into()));
    }
    Ok(())
}

/// The absolute path with every existing component's symlinks resolved.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    let absolute = std::path::absolute(path)?;
    let parent = absolute.parent().unwrap_or(Path::new("/"));
    let name = absolute.file_name().unwrap_or_default();
    Ok(resolve(parent)?.join(name))
}

/// A tensor's byte length.
fn byte_len(t: &TensorPlan) -> usize {
    t.shape.iter().product::<usize>() * crate::dtype::element_size(t.dtype)
}

/// Writes the plan's tensors to `output` in the given form. `compute` produces each tensor's
/// bytes; tensors are computed and written one at a time.
pub fn write_output(
    output: &Path,
    form: &OutputForm,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    force: bool,
    compute: &(dyn Fn(&TensorPlan) -> Result<Vec<u8>> + Sync),
) -> Result<()> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::Output {
            output: output.to_path_buf(),
            reason: format!("its directory {} does not exist", parent.display()),
        });
    }
    let out_err = |e: std::io::Error| Error::Output {
        output: output.to_path_buf(),
        reason: e.to_string(),
    };
    match form {
        OutputForm::File => {
            let tmp = temp_builder(0o666).tempfile_in(&parent).map_err(out_err)?;
            write_safetensors(tmp.as_file(), tmp.path(), tensors, metadata, compute)?;
            tmp.as_file().sync_all().map_err(Error::io(tmp.path()))?;
            replace(
                tmp.into_temp_path().keep().map_err(|e| out_err(e.error))?,
                output,
                force,
            )
        }
        OutputForm::Directory {
            config,
            extra_files,
            shard_size,
        } => {
            let tmp = temp_builder(0o777).tempdir_in(&parent).map_err(out_err)?;
            let dir = tmp.path();
            let shards = split_shards(tensors, *shard_size);
            if shards.len() == 1 {
                let path = dir.join(SINGLE_FILE);
                let file = File::create(&path).map_err(Error::io(&path))?;
                write_safetensors(&file, &path, &shards[0], metadata, compute)?;
                file.sync_all().map_err(Error::io(&path))?;
            } else {
                let total = shards.len();
                let mut weight_map = BTreeMap::new();
                for (i, shard) in shards.iter().enumerate() {
                    let name = format!("model-{:05}-of-{total:05}.safetensors", i + 1);
                    let path = dir.join(&name);
                    let file = File::create(&path).map_err(Error::io(&path))?;
                    write_safetensors(&file, &path, shard, metadata, compute)?;
                    file.sync_all().map_err(Error::io(&path))?;
                    for t in shard {
                        weight_map.insert(t.name.clone(), name.clone());
                    }
                }
                let total_size: usize = tensors.iter().map(byte_len).sum();
                let index =
                    json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
                write_json(&dir.join(INDEX_FILE), &index)?;
            }
            if let Some(config) = config {
                write_json(&dir.join(CONFIG_FILE), config)?;
            }
            for (source, name) in extra_files {
                let dest = dir.join(name);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
                }
                std::fs::copy(source, &dest).map_err(Error::io(source))?;
                File::open(&dest)
                    .and_then(|f| f.sync_all())
                    .map_err(Error::io(&dest))?;
            }
            sync_dir(dir)?;
            let kept = tmp.keep();
            let result = replace(kept.clone(), output, force);
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&kept);
            }
            result
        }
    }
}

/// A builder for temporary siblings. Unix mode bits are those of an ordinary `File::create` /
/// `create_dir` (filtered by the umask), not tempfile's private 0600/0700, because the
/// temporary becomes the output.
fn temp_builder<'a>(mode: u32) -> tempfile::Builder<'a, 'a> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".vcycle-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
}

/// Moves a finished temporary output into place; an existing output (with `force`) is moved
/// aside first and deleted only after the new one is in place.
fn replace(tmp: PathBuf, output: &Path, force: bool) -> Result<()> {
    let out_err = |reason: String| Error::Output {
        output: output.to_path_buf(),
        reason,
    };
    let cleanup = |tmp: &Path| {
        let _ = if tmp.is_dir() {
            std::fs::remove_dir_all(tmp)
        } else {
            std::fs::remove_file(tmp)
        };
    };
    let existing = output.symlink_metadata().ok();
    if existing.is_some() && !force {
        cleanup(&tmp);
        return Err(out_err(
            "already exists (pass --force to replace it)".into(),
        ));
    }
    let parent = tmp.parent().map(Path::to_path_buf).unwrap_or_default();
    // A file replacing a file is one atomic rename; anything involving a directory moves the
    // old output aside first, since rename cannot replace across kinds or onto a directory.
    let aside = match &existing {
        Some(meta) if meta.is_dir() || tmp.is_dir() => {
            let aside = parent.join(format!(
                ".vcycle-old-{}-{}",
                std::process::id(),
                output
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            if let Err(e) = std::fs::rename(output, &aside) {
                cleanup(&tmp);
                return Err(out_err(format!(
                    "cannot move the existing output aside: {e}"
                )));
            }
            Some(aside)
        }
        _ => None,
    };
    if let Err(e) = std::fs::rename(&tmp, output) {
        if let Some(aside) = &aside {
            let _ = std::fs::rename(aside, output);
        }
        cleanup(&tmp);
        return Err(out_err(format!(
            "cannot move the finished output into place: {e}"
        )));
    }
    if let Some(aside) = aside {
        let _ = if aside.is_dir() {
            std::fs::remove_dir_all(&aside)
        } else {
            std::fs::remove_file(&aside)
        };
    }
    sync_dir(&parent)
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directory fsync makes the renames durable; not every filesystem supports it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(Error::io(path))?;
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io(path))
}

/// Greedy split in plan order; a tensor larger than the limit gets a shard of its own.
fn split_shards(tensors: &[TensorPlan], limit: Option<u64>) -> Vec<Vec<TensorPlan>> {
    let Some(limit) = limit else {
        return vec![tensors.to_vec()];
    };
    let mut shards: Vec<Vec<TensorPlan>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in tensors {
        let len = byte_len(t) as u64;
        if size + len > limit && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = shards.last_mut() {
            last.push(t.clone());
        }
    }
    shards
}

/// Writes one safetensors file: the header first (every shape is known from the plan), then
/// each tensor as it is computed, in the order the safetensors crate writes (dtype, larger
/// first, then name), so files match what `safetensors.serialize` would produce.
fn write_safetensors(
    file: &File,
    path: &Path,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    compute: &(dyn Fn(&TensorPlan) -> Result<Vec<u8>> + Sync),
) -> Result<()> {
    let mut order: Vec<&TensorPlan> = tensors.iter().collect();
    order.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(&b.name)));
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0usize;
    for t in &order {
        let len = byte_len(t);
        header.insert(
            t.name.clone(),
            json!({"dtype": crate::dtype::name(t.dtype), "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut header_bytes =
        serde_json::to_vec(&Value::Object(header)).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
    header_bytes.resize(header_bytes.len().next_multiple_of(8), b' ');

    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = Error::io(path);
    let write = |w: &mut BufWriter<&File>, bytes: &[u8]| w.write_all(bytes);
    write(&mut w, &(header_bytes.len() as u64).to_le_bytes())
        .and_then(|_| write(&mut w, &header_bytes))
        .map_err(Error::io(path))?;
    for t in order {
        let bytes = compute(t)?;
        if bytes.len() != byte_len(t) {
            return Err(Error::BadAxis {
                tensor: t.name.clone(),
                axis: 0,
                shape: t.shape.clone(),
                reason: format!("computed {} bytes, planned {}", bytes.len(), byte_len(t)),
            });
        }
        w.write_all(&bytes).map_err(Error::io(path))?;
    }
    w.flush().map_err(io)
}
