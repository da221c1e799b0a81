//! Writing outputs atomically and deterministically: a `.safetensors` file, or a model
//! directory (config.json, the model file or shards with an index, copied extra files).
//!
//! Every path is written under one [`OutputPolicy`]: into a work directory beside it, renamed
//! into place only when complete, so an output appears whole or not at all and an existing one
//! is never half overwritten (see `output_policy.rs`). This file writes the output's form
//! (file, directory, shards); `safetensors_file.rs` writes one safetensors file as its tensors
//! are computed, and `replace.rs` replaces a file atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::execute::Sink;
use crate::plan::TensorPlan;
use crate::read::{CONFIG_FILE, INDEX_FILE, SINGLE_FILE};

mod output_policy;
mod replace;
mod safetensors_file;
mod work_dir;

pub use output_policy::OutputPolicy;
use output_policy::{Staged, commit, sync_dir};
pub use replace::{replace_atomically, sweep_leftovers};
use safetensors_file::{file_order, write_safetensors};
pub use work_dir::remove_work_dirs;

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

/// A tensor's byte length (the plan checked that it fits).
fn byte_len(t: &TensorPlan) -> usize {
    crate::dtype::byte_len(t.dtype, &t.shape).unwrap_or(0)
}

/// Produces one tensor's bytes, handing them in order, piece by piece, to the sink.
pub type Produce<'a> = dyn Fn(&TensorPlan, &mut Sink<'_>) -> Result<()> + Sync + 'a;

/// A file written beside the output, under the same policy (`--plan-json`).
#[derive(Debug, Clone, Copy)]
pub struct SideFile<'a> {
    pub path: &'a Path,
    pub bytes: &'a [u8],
}

/// Writes the plan's tensors to `output` in the given form, and the side files, under
/// `policy`: all appear whole or none does. `compute` produces each tensor's bytes; tensors are
/// computed one at a time, and each block is written by a writer thread while the next one is
/// computed.
pub fn write_output(
    output: &Path,
    policy: &OutputPolicy,
    form: &OutputForm,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    side_files: &[SideFile<'_>],
    compute: &Produce<'_>,
) -> Result<()> {
    let mut paths: Vec<&Path> = side_files.iter().map(|f| f.path).collect();
    paths.push(output);
    policy.check(&paths)?;
    // The side files first: they are quick, and a path that cannot be written stops the run
    // before the long part.
    let mut staged = stage_side_files(policy, side_files)?;
    let out = policy.stage(output)?;
    write_new(output, &out.path(), form, tensors, metadata, compute)
        .map_err(|e| blame_output(e, output, out.work()))?;
    staged.push(out);
    commit(&mut staged)
}

/// Writes side files alone (a dry run's `--plan-json`) under `policy`.
pub fn write_side_files(policy: &OutputPolicy, side_files: &[SideFile<'_>]) -> Result<()> {
    let paths: Vec<&Path> = side_files.iter().map(|f| f.path).collect();
    policy.check(&paths)?;
    let mut staged = stage_side_files(policy, side_files)?;
    commit(&mut staged)
}

fn stage_side_files(policy: &OutputPolicy, side_files: &[SideFile<'_>]) -> Result<Vec<Staged>> {
    side_files
        .iter()
        .map(|f| {
            let staged = policy.stage(f.path)?;
            let path = staged.path();
            write_synced(&path, f.bytes).map_err(|e| Error::Output {
                output: f.path.to_path_buf(),
                reason: format!("cannot be written: {e}"),
            })?;
            Ok(staged)
        })
        .collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Writes the output's content at `tmp` (inside its work directory).
fn write_new(
    output: &Path,
    tmp: &Path,
    form: &OutputForm,
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    compute: &Produce<'_>,
) -> Result<()> {
    match form {
        OutputForm::File => {
            let file = File::create(tmp).map_err(Error::io(tmp))?;
            let tensors: Vec<&TensorPlan> = tensors.iter().collect();
            write_safetensors(&file, tmp, &tensors, metadata, compute)?;
            file.sync_all().map_err(Error::io(tmp))
        }
        OutputForm::Directory {
            config,
            extra_files,
            shard_size,
        } => {
            std::fs::create_dir(tmp).map_err(Error::io(tmp))?;
            let dir = tmp;
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
                // `copy` reads through links: a hub snapshot's files are links to its blobs.
                std::fs::copy(source, &dest).map_err(|e| Error::Output {
                    output: output.to_path_buf(),
                    reason: format!("cannot be written: copying {}: {e}", source.display()),
                })?;
                File::open(&dest)
                    .and_then(|f| f.sync_all())
                    .map_err(Error::io(&dest))?;
            }
            sync_dir(dir);
            Ok(())
        }
    }
}

/// An I/O error on a temporary (a full disk, a read-only directory) is reported as the
/// output's: the temporary is already gone, and its name would only confuse.
fn blame_output(error: Error, output: &Path, work: &Path) -> Error {
    match error {
        Error::Io { path, source } if path.starts_with(work) => Error::Output {
            output: output.to_path_buf(),
            reason: format!("cannot be written: {source}"),
        },
        other => other,
    }
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_synced(path, text.as_bytes()).map_err(Error::io(path))
}

/// The order [`write_output`] computes the tensors in: shard by shard, each in its file's order.
pub fn computation_order<'a>(form: &OutputForm, tensors: &'a [TensorPlan]) -> Vec<&'a TensorPlan> {
    let shard_size = match form {
        OutputForm::File => None,
        OutputForm::Directory { shard_size, .. } => *shard_size,
    };
    split_shards(tensors, shard_size)
        .iter()
        .flat_map(|shard| file_order(shard))
        .collect()
}

/// Greedy split in plan order; a tensor larger than the limit gets a shard of its own.
fn split_shards(tensors: &[TensorPlan], limit: Option<u64>) -> Vec<Vec<&TensorPlan>> {
    let Some(limit) = limit else {
        return vec![tensors.iter().collect()];
    };
    let mut shards: Vec<Vec<&TensorPlan>> = vec![Vec::new()];
    let mut size = 0u64;
    for t in tensors {
        let len = byte_len(t) as u64;
        if size + len > limit && shards.last().is_some_and(|s| !s.is_empty()) {
            shards.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = shards.last_mut() {
            last.push(t);
        }
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::safetensors_file::{BUFFER_BYTES, DISK_SPACE};
    use super::*;
    use crate::execute::Block;
    use crate::plan::DepthOp;
    use crate::test_support::dir_entries as entries;
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

    /// [`write_output`] under a policy with no inputs and no side files.
    fn write_output(
        output: &Path,
        form: &OutputForm,
        tensors: &[TensorPlan],
        metadata: &BTreeMap<String, String>,
        force: bool,
        compute: &Produce<'_>,
    ) -> Result<()> {
        let policy = OutputPolicy::new(&[], force)?;
        super::write_output(output, &policy, form, tensors, metadata, &[], compute)
    }

    fn zeros(t: &TensorPlan, sink: &mut Sink<'_>) -> Result<()> {
        sink(&mut Block::from(vec![0; byte_len(t)]))
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

    /// The writer thread's own error is reported, whatever the computing side met after it
    /// stopped.
    #[test]
    fn a_failing_write_reports_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only.safetensors");
        std::fs::write(&path, "").unwrap();
        let file = File::open(&path).unwrap();
        // Larger than the write buffer, in many blocks: the writer fails while blocks are
        // still being computed.
        let tensors = [tensor("a", BUFFER_BYTES), tensor("b", BUFFER_BYTES)];
        let produce = |t: &TensorPlan, sink: &mut Sink<'_>| {
            for piece in vec![0; byte_len(t)].chunks(4096) {
                sink(&mut Block::from(piece.to_vec()))?;
            }
            Ok(())
        };
        let tensors: Vec<&TensorPlan> = tensors.iter().collect();
        let result = write_safetensors(&file, &path, &tensors, &BTreeMap::new(), &produce);
        match result {
            Err(Error::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_ne!(source.kind(), std::io::ErrorKind::Other, "{source}");
            }
            other => panic!("expected the write's I/O error, got {other:?}"),
        }
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
}
