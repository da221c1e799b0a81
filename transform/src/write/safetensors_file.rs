//! One safetensors file, written as its tensors are computed: the header first, then each
//! block handed to a writer thread while the next is computed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc;

use serde_json::{Map, Value, json};

use super::{Produce, byte_len};
use crate::error::{Error, Result};
use crate::execute::Block;
use crate::plan::TensorPlan;

/// The order of a safetensors file's tensors, the safetensors crate's: dtype, larger first, then
/// name.
pub(super) fn file_order<'a>(tensors: &[&'a TensorPlan]) -> Vec<&'a TensorPlan> {
    let mut order = tensors.to_vec();
    order.sort_by(|a, b| b.dtype.cmp(&a.dtype).then(a.name.cmp(&b.name)));
    order
}

/// Writes one safetensors file: the header first (every shape is known from the plan), then
/// each tensor as it is computed, in the order the safetensors crate writes (dtype, larger
/// first, then name), so files match what `safetensors.serialize` would produce.
pub(super) fn write_safetensors(
    file: &File,
    path: &Path,
    tensors: &[&TensorPlan],
    metadata: &BTreeMap<String, String>,
    compute: &Produce<'_>,
) -> Result<()> {
    let order = file_order(tensors);
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

    // Written on a thread of its own while the next block is computed, through an ordinary
    // buffered file: the page cache writes it back, and the caller's fsync waits for what is
    // left. Written on the computing thread, a bf16 grow took 1.44-1.67 times its copy, with it
    // 1.27-1.29 (docs/performance.md).
    take_space(8 + header_bytes.len()).map_err(Error::io(path))?;
    std::thread::scope(|scope| {
        let (to_writer, computed) = mpsc::sync_channel::<Block>(1);
        let (to_compute, spares) = mpsc::channel::<Block>();
        let writer = scope.spawn(move || {
            let mut out = Output::new(file, path);
            out.write(&(header_bytes.len() as u64).to_le_bytes())?;
            out.write(&header_bytes)?;
            for block in computed {
                out.write(block.bytes())?;
                // The computing side may be gone; then the block is dropped.
                to_compute.send(block).ok();
            }
            out.flush()
        });
        let produced = order.into_iter().try_for_each(|t| {
            let mut check = SizeCheck::new(t);
            compute(t, &mut |block| {
                let len = block.bytes().len();
                check.add(len)?;
                take_space(len).map_err(Error::io(path))?;
                let spare = spares.try_recv().unwrap_or_default();
                // Fails only when the writer stopped on an error, which is reported instead.
                to_writer
                    .send(std::mem::replace(block, spare))
                    .map_err(|_| Error::io(path)(std::io::Error::other("the writer stopped")))
            })?;
            check.finish()
        });
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        written.and(produced)
    })
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
        self.file.write_all(bytes).map_err(Error::io(self.path))
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(Error::io(self.path))
    }
}

/// The write buffer: small tensors (biases, norms) are gathered into writes of this size.
pub(super) const BUFFER_BYTES: usize = 1 << 20;

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
    pub(super) static DISK_SPACE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
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
