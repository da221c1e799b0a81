//! Executing a plan: stream one output tensor at a time, block of rows by block of rows, from
//! memory-mapped inputs.
//!
//! An output row (one index of axis 0) depends only on its few source rows along axis 0, so a
//! tensor is computed in blocks of rows whose size does not depend on the model, each block in
//! parallel, and the input pages it consumed are released (see [`Checkpoint::release`]): the
//! memory of a conversion stays flat however large the model. Per element, the arithmetic is the
//! one of applying the operators to the whole tensor in turn (depth mean, then each axis in
//! order, then interpolation), so results are the same bit for bit. It runs in f64, and in f32
//! for a bf16 tensor computed from bf16 tensors without interpolation ([`Float`]); a row whose
//! f32 values are not all finite is computed again in f64, so that infinities and NaNs come out
//! as they do in f64 and an f32 overflow of intermediate values (a difference of two values
//! near the largest bf16) does not make one.
//!
//! This file streams tensors block by block; a float tensor's rows are computed in `rows.rs`,
//! from its inputs (`source.rs`), or moved as bytes (`rearrange.rs`).
//!
//! [`Float`]: crate::dtype::Float

use std::cell::Cell;

use crate::dtype;
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::plan::{AxisGather, Plan, TensorPlan};
use crate::read::Checkpoint;

mod gathers;
mod rearrange;
mod rows;
mod source;

use gathers::Gathers;

use rows::stream_float;

/// Output bytes computed per block: what a tensor in flight holds, whatever its size.
const BLOCK_BYTES: usize = 4 << 20;
/// Output bytes per parallel task within a block.
const TASK_BYTES: usize = 256 << 10;

thread_local! {
    /// The block a stream computes into, kept from one tensor to the next: a buffer freed and
    /// allocated again for every tensor costs fresh pages (and, freed, TLB shootdowns).
    static BLOCK: Cell<Block> = Cell::default();
}

/// The checkpoints a plan reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The checkpoint the plan's `sources` name (the small one for grow, the other one for
    /// interpolate).
    pub primary: &'a Checkpoint,
    /// The saved large model (interpolate and grow).
    pub large: Option<&'a Checkpoint>,
}

/// Where one output tensor's bytes are handed, block by block, in order. The sink takes the
/// block and leaves in its place one of unspecified contents (one it took before, for the next
/// block to be computed into), so that a block is written while the next is computed without
/// being copied.
pub type Sink<'s> = dyn FnMut(&mut Block) -> Result<()> + 's;

/// Bytes of one block of an output tensor: the first `len` bytes of a buffer of at least a
/// block's size, reused for blocks of every size without being zeroed again before it is
/// overwritten (see [`Block::fill`]).
#[derive(Default)]
pub struct Block {
    buffer: Vec<u8>,
    len: usize,
    /// Whether its values are known to be finite (computed in f32 and checked), so that its
    /// scan for NaN and infinities can be skipped.
    finite: bool,
}

impl Block {
    /// The block's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.buffer.get(..self.len).unwrap_or_default()
    }

    /// Whether every value of the block is known to be finite (otherwise it may or may not
    /// be).
    pub fn known_finite(&self) -> bool {
        self.finite
    }

    /// The block resized to `len` bytes, to be overwritten: bytes the buffer holds are kept,
    /// unless it has fewer than `len`; then it is replaced by zeros, at least a block's worth
    /// ([`BLOCK_BYTES`]).
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        if self.buffer.len() < len {
            self.buffer = vec![0; len.max(BLOCK_BYTES)];
        }
        self.len = len;
        self.finite = false;
        self.buffer.get_mut(..len).unwrap_or_default()
    }
}

impl From<Vec<u8>> for Block {
    fn from(buffer: Vec<u8>) -> Self {
        let len = buffer.len();
        Block {
            buffer,
            len,
            finite: false,
        }
    }
}

/// Executes a plan, one output tensor at a time; the gathers of its axes are built once.
pub struct Executor<'p> {
    plan: &'p Plan,
    gathers: Gathers<'p>,
}

impl<'p> Executor<'p> {
    /// An executor of `plan`.
    pub fn new(plan: &'p Plan) -> Self {
        Executor {
            plan,
            gathers: Gathers::new(plan),
        }
    }

    /// The plan it executes.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    /// The gather of each planned axis of `tensor`, in axis order; None where the axis is
    /// unchanged.
    pub fn axis_gathers(&self, tensor: &TensorPlan) -> Vec<Option<Arc<AxisGather>>> {
        self.gathers.of(tensor)
    }

    /// Computes one planned output tensor and hands its bytes to `sink` in order, in blocks of
    /// whole rows.
    pub fn stream(
        &self,
        tensor: &TensorPlan,
        inputs: Inputs<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let plan = self.plan;
        let Some(first) = tensor.sources.first() else {
            return Err(Error::BadAxis {
                tensor: tensor.name.clone(),
                axis: 0,
                shape: tensor.shape.clone(),
                reason: "the plan gives it no source tensor".into(),
            });
        };
        let result = if dtype::is_float(tensor.dtype) {
            stream_float(plan, &self.gathers, tensor, first, inputs, sink)
        } else {
            stream_raw(plan, tensor, first, inputs, sink)
        };
        for source in &tensor.sources {
            inputs.primary.release_all(source);
        }
        if let (Some(with), Some(large)) = (&tensor.interpolate_with, inputs.large) {
            large.release_all(with);
        }
        result
    }
}

fn missing(plan: &Plan, name: &str, checkpoint: &Checkpoint) -> Error {
    Error::MissingTensor {
        path: checkpoint.path().to_path_buf(),
        tensor: name.to_string(),
        arch: plan.arch.clone(),
    }
}

/// Non-float tensors pass through unchanged (and must be equal in both checkpoints when
/// interpolating).
fn stream_raw(
    plan: &Plan,
    tensor: &TensorPlan,
    first: &str,
    inputs: Inputs<'_>,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let bytes = inputs
        .primary
        .bytes(first)
        .ok_or_else(|| missing(plan, first, inputs.primary))?;
    if let (Some(with), Some(large)) = (&tensor.interpolate_with, inputs.large) {
        let large_bytes = large
            .bytes(with)
            .ok_or_else(|| missing(plan, with, large))?;
        if large_bytes != bytes {
            return Err(Error::Incompatible {
                tensor: tensor.name.clone(),
                reason: "a non-float tensor differs between the two checkpoints".into(),
            });
        }
    }
    let mut offset = 0;
    let mut block = BLOCK.take();
    for chunk in bytes.chunks(BLOCK_BYTES) {
        block.fill(chunk.len()).copy_from_slice(chunk);
        sink(&mut block)?;
        inputs.primary.release(first, offset..offset + chunk.len());
        offset += chunk.len();
    }
    BLOCK.set(block);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{BLOCK_BYTES, Block};

    #[test]
    fn a_block_keeps_its_buffer_and_hands_out_only_its_length() {
        let mut block = Block::from(vec![1, 2, 3, 4]);
        assert_eq!(block.bytes(), [1, 2, 3, 4]);
        block.fill(2).copy_from_slice(&[5, 6]);
        assert_eq!(block.bytes(), [5, 6]);
        // Growing again within the buffer keeps what it held; beyond it, a block of zeros.
        assert_eq!(block.fill(3), [5, 6, 3]);
        assert_eq!(block.fill(6), [0; 6]);
        assert_eq!(block.buffer.len(), BLOCK_BYTES);
        assert_eq!(Block::default().bytes(), [0u8; 0]);
    }
}
