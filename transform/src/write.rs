//! Writing outputs atomically and deterministically: a `.safetensors` file, or a model
//! directory (config.json, the model file or shards with an index, copied extra files).
//!
//! Every output is written into a temporary sibling and renamed into place only when complete,
//! so an output appears whole or not at all and an existing one is never half overwritten.
//! Temporaries are named `.vcycle-<pid>-<random>.tmp`: a failed write removes its own, and a
//! process killed mid-write (which cannot) leaves one that the next `vcycle` writing into the
//! same directory removes (see [`sweep_stale`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::execute::Sink;
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

/// The absolute path with every symlink resolved, including a dangling one at the end (a
/// link to a file not yet created inside an input is inside that input) and those of
/// components that do not exist yet; `..` is applied after resolving what precedes it.
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    resolve_links(&std::path::absolute(path)?, 0)
}

fn resolve_links(absolute: &Path, hops: usize) -> std::io::Result<PathBuf> {
    const MAX_HOPS: usize = 40;
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => {
                let next = resolved.join(other);
                match std::fs::read_link(&next) {
                    Ok(target) if hops < MAX_HOPS => {
                        // A relative target is relative to the link's directory; an absolute
                        // one replaces the path.
                        resolved = resolve_links(&resolved.join(target), hops + 1)?;
                    }
                    _ => resolved = next,
                }
            }
        }
    }
    Ok(resolved)
}

/// A tensor's byte length (the plan checked that it fits).
fn byte_len(t: &TensorPlan) -> usize {
    crate::dtype::byte_len(t.dtype, &t.shape).unwrap_or(0)
}

/// Produces one tensor's bytes, handing them in order, piece by piece, to the sink.
pub type Produce<'a> = dyn Fn(&TensorPlan, &mut Sink<'_>) -> Result<()> + Sync + 'a;

/// Writes the plan's tensors to `output` in the given form. `compute` produces each tensor's
/// bytes; tensors are computed and written one at a time, each as it is produced.
pub fn write_output(
    output: &Path,
    form: &OutputForm,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    force: bool,
    compute: &Produce<'_>,
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
    sweep_stale(&parent);
    write_new(output, &parent, form, tensors, metadata, force, compute)
        .map_err(|e| blame_output(e, output, &parent))
}

fn write_new(
    output: &Path,
    parent: &Path,
    form: &OutputForm,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    force: bool,
    compute: &Produce<'_>,
) -> Result<()> {
    let out_err = |e: std::io::Error| Error::Output {
        output: output.to_path_buf(),
        reason: format!("cannot be written: {e}"),
    };
    let prefix = temp_prefix();
    match form {
        OutputForm::File => {
            let tmp = temp_builder(&prefix, 0o666)
                .tempfile_in(parent)
                .map_err(out_err)?;
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
            let tmp = temp_builder(&prefix, 0o777)
                .tempdir_in(parent)
                .map_err(out_err)?;
            let dir = tmp.path();
            let shards = split_shards(tensors, *shard_size);
            if let [single] = shards.as_slice() {
                let path = dir.join(SINGLE_FILE);
                let file = File::create(&path).map_err(Error::io(&path))?;
                write_safetensors(&file, &path, single, metadata, compute)?;
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
                std::fs::copy(source, &dest).map_err(|e| Error::Output {
                    output: output.to_path_buf(),
                    reason: format!("cannot be written: copying {}: {e}", source.display()),
                })?;
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

/// An I/O error on a temporary (a full disk, a read-only directory) is reported as the
/// output's: the temporary is already gone, and its name would only confuse.
fn blame_output(error: Error, output: &Path, parent: &Path) -> Error {
    match error {
        Error::Io { path, source } if is_temporary(&path, parent) => Error::Output {
            output: output.to_path_buf(),
            reason: format!("cannot be written: {source}"),
        },
        other => other,
    }
}

fn is_temporary(path: &Path, parent: &Path) -> bool {
    // tempfile makes the paths it creates absolute.
    let absolute = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    [parent, absolute.as_path()].iter().any(|parent| {
        path.strip_prefix(parent)
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with(".vcycle-"))
    })
}

/// `.vcycle-<pid>-`: the process id lets a later run tell a dead process's leftovers from a
/// live one's work in progress.
fn temp_prefix() -> String {
    format!(".vcycle-{}-", std::process::id())
}

/// Writes `bytes` to `path` atomically (temporary sibling, fsync, rename), replacing an
/// existing file. Used for side outputs such as `--plan-json`.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_err = |e: std::io::Error| Error::Output {
        output: path.to_path_buf(),
        reason: format!("cannot be written: {e}"),
    };
    let prefix = temp_prefix();
    let mut tmp = temp_builder(&prefix, 0o666)
        .tempfile_in(&parent)
        .map_err(out_err)?;
    tmp.write_all(bytes).map_err(out_err)?;
    tmp.as_file().sync_all().map_err(out_err)?;
    tmp.persist(path).map_err(|e| out_err(e.error))?;
    sync_dir(&parent)
}

/// Cleans up after a `vcycle` that was killed while writing into `dir`: removes its
/// `.vcycle-<pid>-*.tmp` temporaries, and puts back an output it had moved aside
/// (`.vcycle-old-<pid>-<name>`) but not yet replaced, or removes the aside copy when the new
/// output is in place. Only entries of processes that no longer run are touched, as seen in
/// `/proc` (on other systems, and without `/proc`, nothing is touched). Errors are ignored:
/// this is housekeeping, and a leftover never affects a new output.
pub fn sweep_stale(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let dead = |pid: &str| {
        pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
        })
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(rest) = name.strip_prefix(".vcycle-old-") {
            let Some((pid, original)) = rest.split_once('-') else {
                continue;
            };
            if !dead(pid) || original.is_empty() {
                continue;
            }
            let original = dir.join(original);
            if original.symlink_metadata().is_err() {
                let _ = std::fs::rename(entry.path(), &original);
            } else {
                remove_any(&entry.path());
            }
        } else if let Some(rest) = name.strip_prefix(".vcycle-")
            && name.ends_with(".tmp")
            && let Some((pid, _)) = rest.split_once('-')
            && dead(pid)
        {
            remove_any(&entry.path());
        }
    }
}

fn remove_any(path: &Path) {
    let _ = match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    };
}

/// A builder for temporary siblings. Unix mode bits are those of an ordinary `File::create` /
/// `create_dir` (filtered by the umask), not tempfile's private 0600/0700, because the
/// temporary becomes the output.
fn temp_builder(prefix: &str, mode: u32) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".tmp");
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
    compute: &Produce<'_>,
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

    // Written as computed, block after block, through an ordinary buffered file: the page
    // cache writes it back, and the caller's fsync waits for what is left.
    let mut out = Output::new(file, path);
    out.write(&(header_bytes.len() as u64).to_le_bytes())?;
    out.write(&header_bytes)?;
    for t in order {
        let mut check = SizeCheck::new(t);
        compute(t, &mut |block| {
            let bytes = block.bytes();
            check.add(bytes.len())?;
            out.write(bytes)
        })?;
        check.finish()?;
    }
    out.flush()
}

/// A safetensors file being written.
struct Output<'a> {
    file: BufWriter<&'a File>,
    path: &'a Path,
}

impl<'a> Output<'a> {
    fn new(file: &'a File, path: &'a Path) -> Self {
        Output {
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
            path,
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        take_space(bytes.len()).map_err(Error::io(self.path))?;
        self.file.write_all(bytes).map_err(Error::io(self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(Error::io(self.path))
    }
}

/// The write buffer: small tensors (biases, norms) are gathered into writes of this size.
const BUFFER_BYTES: usize = 1 << 20;

/// Bytes computed for one tensor, against its planned size.
struct SizeCheck<'t> {
    tensor: &'t TensorPlan,
    planned: usize,
    written: usize,
}

impl<'t> SizeCheck<'t> {
    fn new(tensor: &'t TensorPlan) -> Self {
        SizeCheck {
            tensor,
            planned: byte_len(tensor),
            written: 0,
        }
    }

    /// Counts `bytes` more; checked before they are written, since the header already promised
    /// the planned size.
    fn add(&mut self, bytes: usize) -> Result<()> {
        self.written += bytes;
        if self.written > self.planned {
            return Err(self.wrong_size());
        }
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if self.written != self.planned {
            return Err(self.wrong_size());
        }
        Ok(())
    }

    fn wrong_size(&self) -> Error {
        Error::BadAxis {
            tensor: self.tensor.name.clone(),
            axis: 0,
            shape: self.tensor.shape.clone(),
            reason: format!("computed {} bytes, planned {}", self.written, self.planned),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Under test: bytes of tensor files the disk still takes before it is full.
    static DISK_SPACE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

#[cfg(not(test))]
fn take_space(_: usize) -> std::io::Result<()> {
    Ok(())
}

/// Under test: a disk that fills up takes no write larger than the space it has left.
#[cfg(test)]
fn take_space(len: usize) -> std::io::Result<()> {
    let Some(left) = DISK_SPACE.get() else {
        return Ok(());
    };
    match left.checked_sub(len as u64) {
        Some(rest) => {
            DISK_SPACE.set(Some(rest));
            Ok(())
        }
        None => Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (simulated)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::Block;
    use crate::plan::DepthOp;
    use safetensors::Dtype;

    fn tensor(name: &str, n: usize) -> TensorPlan {
        TensorPlan {
            name: name.into(),
            dtype: Dtype::F32,
            shape: vec![n],
            sources: vec![name.into()],
            depth: DepthOp::Single,
            axes: Vec::new(),
            interpolate_with: None,
            rule_axes: Vec::new(),
        }
    }

    fn zeros(t: &TensorPlan, sink: &mut Sink<'_>) -> Result<()> {
        sink(&mut Block::from(vec![0; byte_len(t)]))
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs `f` on a disk that takes `space` more bytes of tensor data.
    fn with_disk_space<T>(space: u64, f: impl FnOnce() -> T) -> T {
        DISK_SPACE.set(Some(space));
        let out = f();
        DISK_SPACE.set(None);
        out
    }

    #[test]
    fn a_full_disk_leaves_nothing_and_keeps_the_old_output() {
        let tensors = [tensor("a", 1000), tensor("b", 1000)];
        let metadata = BTreeMap::new();
        let forms = [
            OutputForm::File,
            OutputForm::Directory {
                config: Some(json!({"n": 1})),
                extra_files: Vec::new(),
                shard_size: None,
            },
            OutputForm::Directory {
                config: None,
                extra_files: Vec::new(),
                shard_size: Some(4000),
            },
        ];
        for form in forms {
            for space in [0, 100, 5000] {
                let dir = tempfile::tempdir().unwrap();
                let output = dir.path().join("out");
                let result = with_disk_space(space, || {
                    write_output(&output, &form, &tensors, &metadata, false, &zeros)
                });
                let message = result.map(|_| ()).unwrap_err().to_string();
                assert!(
                    message.contains("out cannot be written") && message.contains("no space left"),
                    "{message}"
                );
                assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

                // An existing output survives a failed --force replacement.
                std::fs::write(&output, "old").unwrap();
                let result = with_disk_space(space, || {
                    write_output(&output, &form, &tensors, &metadata, true, &zeros)
                });
                assert!(result.is_err());
                assert_eq!(entries(dir.path()), ["out"]);
                assert_eq!(std::fs::read_to_string(&output).unwrap(), "old");
            }
        }
    }

    #[test]
    fn a_failing_computation_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.safetensors");
        let tensors = [tensor("a", 10), tensor("b", 10)];
        let fail = |t: &TensorPlan, sink: &mut Sink<'_>| {
            if t.name == "b" {
                Err(Error::Unrunnable {
                    path: PathBuf::new(),
                    reason: "boom".into(),
                })
            } else {
                zeros(t, sink)
            }
        };
        let result = write_output(
            &output,
            &OutputForm::File,
            &tensors,
            &BTreeMap::new(),
            false,
            &fail,
        );
        assert!(result.is_err());
        assert!(entries(dir.path()).is_empty());
    }

    /// Tensor `t`'s bytes: its name's first byte mixed with a count, with `extra` bytes more
    /// (or fewer) for tensor `wrong`.
    fn pattern(t: &TensorPlan, wrong: &str, extra: isize) -> Vec<u8> {
        let mut len = byte_len(t);
        if t.name == wrong {
            len = len.saturating_add_signed(extra);
        }
        let tag = t.name.as_bytes()[0];
        (0..len).map(|i| tag ^ (i % 251) as u8).collect()
    }

    #[test]
    fn tensors_are_written_whole_in_order_and_their_sizes_checked() {
        // Small ones, and one larger than the write buffer.
        let big = BUFFER_BYTES / 4 + 1;
        let tensors = [
            tensor("a", 10),
            tensor("b", 3000),
            tensor("c", big),
            tensor("d", 1),
            tensor("e", 700),
        ];
        let dir = tempfile::tempdir().unwrap();
        // Each tensor handed over in pieces of 1000 bytes.
        let write = |name: &str, wrong: &str, extra: isize| {
            let output = dir.path().join(name);
            let produce = |t: &TensorPlan, sink: &mut Sink<'_>| {
                for piece in pattern(t, wrong, extra).chunks(1000) {
                    sink(&mut Block::from(piece.to_vec()))?;
                }
                Ok(())
            };
            let written = write_output(
                &output,
                &OutputForm::File,
                &tensors,
                &BTreeMap::new(),
                false,
                &produce,
            );
            (output, written.map(|_| ()))
        };
        let (output, written) = write("out.safetensors", "", 0);
        written.unwrap();
        let bytes = std::fs::read(&output).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for t in &tensors {
            let data = file.tensor(&t.name).unwrap().data().to_vec();
            assert!(data == pattern(t, "", 0), "{}", t.name);
        }

        // A tensor computed with a byte too many or too few is refused.
        for (wrong, extra) in [("b", 1), ("b", -1), ("d", 1), ("c", 1), ("c", -1)] {
            let (output, written) = write(&format!("{wrong}{extra}.safetensors"), wrong, extra);
            let message = written.unwrap_err().to_string();
            assert!(
                message.contains(&format!("`{wrong}`")) && message.contains("planned"),
                "{message}"
            );
            assert!(!output.exists());
        }
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_and_an_aside_output_restored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A pid that is not running: the largest possible, far above pid_max.
        let dead = u32::MAX;
        let live = std::process::id();
        std::fs::write(d.join(format!(".vcycle-{dead}-abc.tmp")), "partial").unwrap();
        std::fs::create_dir(d.join(format!(".vcycle-{dead}-def.tmp"))).unwrap();
        std::fs::write(d.join(format!(".vcycle-{live}-ghi.tmp")), "in progress").unwrap();
        // Moved aside, new output not yet in place: put back.
        std::fs::create_dir(d.join(format!(".vcycle-old-{dead}-model"))).unwrap();
        // Moved aside, new output in place: the aside copy goes.
        std::fs::write(d.join("file.safetensors"), "new").unwrap();
        std::fs::write(
            d.join(format!(".vcycle-old-{dead}-file.safetensors")),
            "old",
        )
        .unwrap();
        // Not ours.
        std::fs::write(d.join(".vcycle-notes.tmp"), "user file").unwrap();
        std::fs::write(d.join(".vcycle-x-1.tmp"), "user file").unwrap();
        sweep_stale(d);
        let mut expected = vec![
            format!(".vcycle-{live}-ghi.tmp"),
            ".vcycle-notes.tmp".to_string(),
            ".vcycle-x-1.tmp".to_string(),
            "file.safetensors".to_string(),
            "model".to_string(),
        ];
        expected.sort();
        assert_eq!(entries(d), expected);
        assert_eq!(
            std::fs::read_to_string(d.join("file.safetensors")).unwrap(),
            "new"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_resolved_even_dangling_and_through_missing_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let input = root.join("in");
        std::fs::create_dir(&input).unwrap();
        std::os::unix::fs::symlink("in/new.safetensors", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(&input, root.join("link")).unwrap();
        assert_eq!(
            resolve(&root.join("dangling")).unwrap(),
            input.join("new.safetensors")
        );
        assert_eq!(resolve(&root.join("link/a/b")).unwrap(), input.join("a/b"));
        assert_eq!(resolve(&root.join("x/../in/y")).unwrap(), input.join("y"));
        // A loop ends instead of recursing forever.
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve(&root.join("loop/out")).is_ok());
        for output in ["dangling", "link/new", "x/../in/y"] {
            let message = check_output_path(&[&input], &root.join(output), true)
                .unwrap_err()
                .to_string();
            assert!(message.contains("inside the input"), "{output}: {message}");
        }
    }

    #[test]
    fn side_files_are_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        write_file(&path, b"one").unwrap();
        write_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(entries(dir.path()), ["plan.json"]);
    }
}
