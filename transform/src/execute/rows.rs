//! The rows of one float output tensor: what they are computed from, how one row is computed
//! (in f32 or f64, through the general path or as bytes moved), and the stream of their blocks.

use std::cell::Cell;
use std::sync::Arc;

use rayon::prelude::*;
use safetensors::Dtype;

use super::Gathers;
use super::rearrange::Rearrange;
use super::source::Source;
use super::{BLOCK, BLOCK_BYTES, Block, Inputs, Sink, TASK_BYTES, missing};
use crate::dtype::{self, Float, element_size};
use crate::error::{Error, Result};
use crate::ops::{self, GatherError};
use crate::plan::{AxisGather, DepthOp, Operator, Plan, TensorPlan};

#[cfg(test)]
mod bf16_in_f32_tests;
#[cfg(test)]
mod rearrange_tests;

thread_local! {
    /// A worker's buffers, kept from one task to the next.
    static SCRATCH: Cell<Scratch> = Cell::default();
}

/// Everything the rows of one float output tensor are computed from.
struct Rows<'a> {
    tensor: &'a TensorPlan,
    /// The depth group's layers (one unless they are averaged).
    layers: Vec<Source<'a>>,
    /// The gather of axis 0 (None: unchanged).
    rows_gather: Option<Arc<AxisGather>>,
    /// The gather of each further axis as a gather of blocks and the block size (None:
    /// unchanged); see [`Gather::blocks`].
    ///
    /// [`Gather::blocks`]: crate::ops::Gather::blocks
    row_gathers: Vec<Option<Arc<AxisGather>>>,
    /// The shape of an input row (axes 1..).
    in_row_shape: Vec<usize>,
    in_row_len: usize,
    out_rows: usize,
    out_row_len: usize,
    /// The saved large tensor interpolated with, and α.
    large: Option<(Source<'a>, f64)>,
    /// Where every output row is bytes of one input row moved and divided by powers of two.
    rearrange: Option<Rearrange>,
    /// Whether rows are computed in f32: every input and the output are bf16, and nothing is
    /// interpolated.
    in_f32: bool,
}

/// Buffers of one worker, reused row after row.
#[derive(Default)]
struct Scratch {
    f64: Values<f64>,
    f32: Values<f32>,
    shape: Vec<usize>,
    split_shape: Vec<usize>,
}

/// A worker's buffers of values of one float type.
#[derive(Default)]
struct Values<T> {
    /// The decoded (and depth-averaged) source rows of the output row.
    rows: Vec<T>,
    /// One decoded layer row each.
    layers: Vec<Vec<T>>,
    row: Vec<T>,
    tmp: Vec<T>,
    large: Vec<T>,
}

/// A float rows are computed in, with its buffers in a worker's [`Scratch`].
trait Computed: Float {
    /// The buffers of this type, and the shape buffers.
    fn split(s: &mut Scratch) -> (&mut Values<Self>, &mut Vec<usize>, &mut Vec<usize>);
    /// Encodes a computed row into `out` as `dtype` and says what it is; with
    /// [`Check::NotFinite`], `out` is left unspecified.
    fn encode(dtype: Dtype, row: &[Self], out: &mut [u8]) -> Option<Check>;
}

/// What a computed row is, found as it is encoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Check {
    /// Not known: the row is encoded and its output scanned where that is asked for.
    Unknown,
    /// An f32 row whose values are finite and stay so in bf16: its output needs no scan.
    Finite,
    /// An f32 row holding an infinity or a NaN: computed again in f64, so that they come out
    /// as they do there (and an overflow of f32 intermediates makes none).
    NotFinite,
}

impl Computed for f64 {
    fn split(s: &mut Scratch) -> (&mut Values<f64>, &mut Vec<usize>, &mut Vec<usize>) {
        (&mut s.f64, &mut s.shape, &mut s.split_shape)
    }

    fn encode(dtype: Dtype, row: &[f64], out: &mut [u8]) -> Option<Check> {
        dtype::encode_into(dtype, row, out).map(|()| Check::Unknown)
    }
}

impl Computed for f32 {
    fn split(s: &mut Scratch) -> (&mut Values<f32>, &mut Vec<usize>, &mut Vec<usize>) {
        (&mut s.f32, &mut s.shape, &mut s.split_shape)
    }

    /// Only bf16 outputs are computed in f32 (see `Rows::in_f32`): encoded and checked in one
    /// pass. Any other dtype is refused.
    fn encode(dtype: Dtype, row: &[f32], out: &mut [u8]) -> Option<Check> {
        if dtype != Dtype::BF16 {
            return None;
        }
        Some(match dtype::encode_bf16_largest_magnitude(row, out) {
            bits if bits >= f32::INFINITY.to_bits() => Check::NotFinite,
            bits if bits < dtype::BF16_OVERFLOW_BITS => Check::Finite,
            _ => Check::Unknown,
        })
    }
}

/// The worker's [`Scratch`], taken for a task and given back when it ends.
struct ReusedScratch(Scratch);

impl ReusedScratch {
    fn take() -> Self {
        ReusedScratch(SCRATCH.take())
    }
}

impl Drop for ReusedScratch {
    fn drop(&mut self) {
        SCRATCH.set(std::mem::take(&mut self.0));
    }
}

impl Rows<'_> {
    /// Computes output row `i` into `out` (its bytes); true if its values are known to be
    /// finite.
    fn compute(&self, i: usize, s: &mut Scratch, out: &mut [u8]) -> Result<bool> {
        if self.in_f32 {
            match self.compute_in::<f32>(i, s, out)? {
                Check::NotFinite => {}
                check => return Ok(check == Check::Finite),
            }
        }
        self.compute_in::<f64>(i, s, out)
            .map(|check| check == Check::Finite)
    }

    /// Computes output row `i` into `out` in `T`; with [`Check::NotFinite`] (f32 only), `out`
    /// is left unspecified.
    fn compute_in<T: Computed>(&self, i: usize, s: &mut Scratch, out: &mut [u8]) -> Result<Check> {
        let (values, shape, split_shape) = T::split(s);
        if let (Some(rearrange), [layer]) = (&self.rearrange, self.layers.as_slice()) {
            let (j, k) = rearrange.source_row(i).ok_or_else(|| self.bad_row(i))?;
            let row = layer.row(j)?;
            let done = match &self.large {
                None => rearrange.row(row, k, out).map(|()| Check::Unknown),
                Some((large, alpha)) => {
                    let row_values = self.prefix(&mut values.row, self.out_row_len)?;
                    rearrange
                        .interpolated_row(row, k, large.row(i)?, *alpha, row_values)
                        .and_then(|()| self.finish(row_values, out))
                }
            };
            return done.ok_or_else(|| self.bad_row(i));
        }
        let len = self.out_row_len;
        if self.layers.is_empty() {
            // `--depth-init zero`: an added layer's output projection, zero before any
            // interpolation.
            self.prefix(&mut values.row, len)?.fill(T::ZERO);
        } else {
            self.resize_row(i, values, shape, split_shape)?;
        }
        let row = values.row.get_mut(..len).ok_or_else(|| self.bad_row(i))?;
        if let Some((large, alpha)) = &self.large {
            let large_row = self.prefix(&mut values.large, len)?;
            large.decode_row(i, large_row)?;
            ops::interpolate_into(large_row, row, *alpha);
        }
        self.finish(row, out)
            .ok_or_else(|| Error::UnsupportedDtype {
                tensor: self.tensor.name.clone(),
                dtype: self.tensor.dtype,
            })
    }

    /// Encodes a computed row into `out` ([`Computed::encode`]).
    fn finish<T: Computed>(&self, row: &[T], out: &mut [u8]) -> Option<Check> {
        T::encode(self.tensor.dtype, row, out)
    }

    /// Row `i` before interpolation, into the first `out_row_len` values of `values.row`: its
    /// sources' depth operation, then the gather of each transformed axis.
    fn resize_row<T: Float>(
        &self,
        i: usize,
        values: &mut Values<T>,
        shape: &mut Vec<usize>,
        split_shape: &mut Vec<usize>,
    ) -> Result<()> {
        let n = self.in_row_len;
        let single = [i];
        let (sources, divisor) = match &self.rows_gather {
            Some(g) => g.gather.source(i).ok_or_else(|| self.bad_row(i))?,
            None => (&single[..], 1.0),
        };
        let row = self.prefix(&mut values.row, n)?;
        match (sources, divisor, self.layers.as_slice()) {
            // One row of one layer, as it is: decoded straight into place.
            ([j], 1.0, [layer]) => layer.decode_row(*j, row)?,
            _ => {
                let rows = self.prefix(&mut values.rows, sources.len() * n)?;
                for (&j, dst) in sources.iter().zip(rows.chunks_exact_mut(n.max(1))) {
                    self.depth_row(j, dst, &mut values.layers)?;
                }
                let rows = &*rows;
                let row_of = |j: usize| {
                    let k = sources.iter().position(|&x| x == j).unwrap_or(0);
                    rows.get(k * n..(k + 1) * n).unwrap_or_default()
                };
                ops::combine(row, sources, divisor, row_of);
            }
        }

        let mut len = n;
        shape.clear();
        shape.extend_from_slice(&self.in_row_shape);
        for (k, gather) in self.row_gathers.iter().enumerate() {
            let Some((gather, block)) = gather.as_ref().map(|g| &g.blocks) else {
                continue;
            };
            // Row axis k split into (blocks, block).
            split_shape.clear();
            split_shape.extend_from_slice(shape.get(..k).unwrap_or_default());
            split_shape.push(gather.input_len());
            split_shape.push(*block);
            split_shape.extend_from_slice(shape.get(k + 1..).unwrap_or_default());
            let gathered = gather
                .output_size(split_shape, k)
                .map_err(|e| self.gather_error(e, k))?;
            let out = self.prefix(&mut values.tmp, gathered)?;
            let row = values.row.get(..len).ok_or_else(|| self.bad_row(i))?;
            gather
                .apply_into(row, split_shape, k, out)
                .map_err(|e| self.gather_error(e, k))?;
            std::mem::swap(&mut values.row, &mut values.tmp);
            len = gathered;
            if let Some(size) = shape.get_mut(k) {
                *size = gather.output_len() * block;
            }
        }
        if len != self.out_row_len {
            return Err(self.bad_row(i));
        }
        Ok(())
    }

    /// The first `len` values of `buffer`, which grows to hold them and never shrinks: a
    /// buffer reused row after row is filled only when it grows.
    fn prefix<'b, T: Float>(&self, buffer: &'b mut Vec<T>, len: usize) -> Result<&'b mut [T]> {
        if buffer.len() < len {
            buffer
                .try_reserve_exact(len - buffer.len())
                .map_err(|_| Error::OutOfMemory {
                    tensor: self.tensor.name.clone(),
                    bytes: len.saturating_mul(size_of::<T>()),
                })?;
            buffer.resize(len, T::ZERO);
        }
        Ok(buffer.get_mut(..len).unwrap_or_default())
    }

    fn gather_error(&self, error: GatherError, row_axis: usize) -> Error {
        match error {
            GatherError::Shape => Error::BadAxis {
                tensor: self.tensor.name.clone(),
                axis: row_axis + 1,
                shape: self.tensor.shape.clone(),
                reason: "the row does not fill the shape".into(),
            },
            GatherError::OutOfMemory(bytes) => Error::OutOfMemory {
                tensor: self.tensor.name.clone(),
                bytes,
            },
        }
    }

    /// Row `j` of the depth group's layers into `dst`: the row of the single layer, or the
    /// mean of the layers' rows ([`ops::mean_into`]). Two layers of one dtype (halving the
    /// depth) are decoded and averaged in one pass; more are decoded a chunk at a time into
    /// `chunks`, so that what [`ops::mean_into`] reads stays in the first-level cache.
    fn depth_row<T: Float>(&self, j: usize, dst: &mut [T], chunks: &mut Vec<Vec<T>>) -> Result<()> {
        match self.layers.as_slice() {
            [layer] => layer.decode_row(j, dst),
            [a, b] if a.dtype == b.dtype => {
                dtype::decode_pair_into(a.dtype, a.row(j)?, b.row(j)?, dst, ops::pair_mean)
                    .ok_or_else(|| a.unsupported())
            }
            layers => {
                const CHUNK: usize = 512;
                chunks.resize_with(layers.len(), Vec::new);
                for (k, out) in dst.chunks_mut(CHUNK).enumerate() {
                    for (layer, chunk) in layers.iter().zip(chunks.iter_mut()) {
                        let size = element_size(layer.dtype);
                        let bytes = layer
                            .row(j)?
                            .get(k * CHUNK * size..(k * CHUNK + out.len()) * size)
                            .ok_or_else(|| self.bad_row(j))?;
                        chunk.resize(out.len(), T::ZERO);
                        dtype::decode_into(layer.dtype, bytes, chunk)
                            .ok_or_else(|| layer.unsupported())?;
                    }
                    ops::mean_into(out, chunks);
                }
                Ok(())
            }
        }
    }

    fn bad_row(&self, i: usize) -> Error {
        Error::BadAxis {
            tensor: self.tensor.name.clone(),
            axis: 0,
            shape: self.tensor.shape.clone(),
            reason: format!("output row {i} cannot be computed from the plan"),
        }
    }
}

impl<'a> Rows<'a> {
    /// Opens the inputs of a float output tensor and checks their shapes against the plan.
    fn open(
        plan: &Plan,
        gathers: &Gathers<'_>,
        tensor: &'a TensorPlan,
        first: &'a str,
        inputs: Inputs<'a>,
    ) -> Result<Self> {
        let in_shape = inputs
            .primary
            .info(first)
            .map(|i| i.shape.clone())
            .ok_or_else(|| missing(plan, first, inputs.primary))?;
        let rank = in_shape.len();
        let mut shape = in_shape.clone();
        let mut gathers = gathers.of(tensor);
        gathers.resize(rank, None);
        for (axis, (gather, rule_axis)) in gathers.iter().zip(&tensor.rule_axes).enumerate() {
            let Some(AxisGather { gather, .. }) = gather.as_deref() else {
                continue;
            };
            if shape.get(axis) != Some(&gather.input_len()) {
                return Err(Error::BadAxis {
                    tensor: first.to_string(),
                    axis,
                    shape: shape.clone(),
                    reason: format!("expected size {} for `{rule_axis}`", gather.input_len()),
                });
            }
            if let Some(size) = shape.get_mut(axis) {
                *size = gather.output_len();
            }
        }
        if shape != tensor.shape {
            return Err(Error::BadAxis {
                tensor: tensor.name.clone(),
                axis: 0,
                shape,
                reason: format!("planned shape {:?} was not produced", tensor.shape),
            });
        }
        // A scalar is one row of one value.
        let in_row_shape = in_shape.get(1..).unwrap_or_default().to_vec();
        let in_row_len: usize = in_row_shape.iter().product();
        let out_rows = tensor.shape.first().copied().unwrap_or(1);
        let out_row_len: usize = tensor.shape.iter().skip(1).product();

        let depth = match tensor.depth {
            DepthOp::Mean => tensor.sources.as_slice(),
            DepthOp::Single | DepthOp::First => tensor.sources.get(..1).unwrap_or_default(),
            DepthOp::Zero => &[],
        };
        let mut layers = Vec::with_capacity(depth.len());
        for name in depth {
            let layer = Source::open(plan, inputs.primary, name, in_row_len)?;
            let layer_shape = inputs.primary.info(name).map(|i| i.shape.as_slice());
            if layer_shape != Some(in_shape.as_slice()) {
                return Err(Error::BadAxis {
                    tensor: name.clone(),
                    axis: 0,
                    shape: layer_shape.unwrap_or_default().to_vec(),
                    reason: format!("averaged with `{first}`, whose shape is {in_shape:?}"),
                });
            }
            layers.push(layer);
        }
        let large = match (&tensor.interpolate_with, inputs.large, plan.operator) {
            (
                Some(with),
                Some(large),
                Operator::Interpolate { alpha } | Operator::Grow { alpha },
            ) => {
                let source = Source::open(plan, large, with, out_row_len)?;
                let numel: usize = tensor.shape.iter().product();
                let large_numel = large.info(with).map_or(0, |i| i.numel());
                if large_numel != numel {
                    return Err(Error::Incompatible {
                        tensor: tensor.name.clone(),
                        reason: format!(
                            "{large_numel} values in {} but {numel} computed",
                            large.path().display(),
                        ),
                    });
                }
                Some((source, alpha))
            }
            _ => None,
        };
        let mut gathers = gathers.into_iter();
        let rows_gather = gathers.next().flatten();
        let row_gathers: Vec<_> = gathers.collect();
        // Interpolation at an end point copies one input: the general path does that.
        let rearranged = match (layers.as_slice(), &large) {
            ([layer], None) => layer.dtype == tensor.dtype,
            ([layer], Some((large, alpha))) => {
                layer.dtype == tensor.dtype
                    && large.dtype == tensor.dtype
                    && *alpha != 0.0
                    && *alpha != 1.0
            }
            _ => false,
        };
        let rearrange = if rearranged {
            Rearrange::new(
                rows_gather.as_deref().map(|g| &g.gather),
                &row_gathers,
                &in_row_shape,
                tensor.dtype,
            )
        } else {
            None
        };
        // Not when interpolating: (1 − α)·large + α·small of bf16 values lands exactly halfway
        // between two bf16 values for a value in 200 (α = 0.3), where α to f32's 8 digits
        // rounds a third of them the other way (the f64 result rounds them as the exact one).
        let in_f32 = tensor.dtype == Dtype::BF16
            && large.is_none()
            && layers.iter().all(|l| l.dtype == Dtype::BF16);
        Ok(Rows {
            tensor,
            layers,
            rows_gather,
            row_gathers,
            in_row_shape,
            in_row_len,
            out_rows,
            out_row_len,
            large,
            rearrange,
            in_f32,
        })
    }
}

/// Computes a float output tensor block of rows by block of rows, each block in parallel, and
/// hands the blocks to `sink` in order.
pub(super) fn stream_float(
    plan: &Plan,
    gathers: &Gathers<'_>,
    tensor: &TensorPlan,
    first: &str,
    inputs: Inputs<'_>,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let rows = Rows::open(plan, gathers, tensor, first, inputs)?;
    let out_row_bytes = rows.out_row_len * element_size(tensor.dtype);
    let out_rows = rows.out_rows;
    if out_row_bytes == 0 || out_rows == 0 {
        return Ok(());
    }
    let block_rows = (BLOCK_BYTES / out_row_bytes).max(1);
    let task_rows = (TASK_BYTES / out_row_bytes).max(1);
    let compute_block = |start: usize, block: &mut Block| -> Result<()> {
        let end = (start + block_rows).min(out_rows);
        let finite = block
            .fill((end - start) * out_row_bytes)
            .par_chunks_mut(task_rows * out_row_bytes)
            .enumerate()
            .map_init(ReusedScratch::take, |scratch, (task, chunk)| {
                let first_row = start + task * task_rows;
                chunk.chunks_exact_mut(out_row_bytes).enumerate().try_fold(
                    true,
                    |finite, (r, out)| {
                        let row = rows.compute(first_row + r, &mut scratch.0, out)?;
                        Ok::<_, Error>(finite & row)
                    },
                )
            })
            .try_reduce(|| true, |a, b| Ok(a & b))?;
        block.finite = finite;
        Ok(())
    };
    // Row i of the output reads row i of its inputs unless axis 0 is gathered: then what a
    // block consumed can be released as it goes.
    let rows_in_order = rows.rows_gather.is_none();
    let mut block = BLOCK.take();
    for start in (0..out_rows).step_by(block_rows) {
        compute_block(start, &mut block)?;
        sink(&mut block)?;
        let end = (start + block_rows).min(out_rows);
        if rows_in_order {
            for layer in &rows.layers {
                let range = start * layer.row_bytes..end * layer.row_bytes;
                inputs.primary.release(layer.name, range);
            }
        }
        if let (Some((large, _)), Some(checkpoint)) = (&rows.large, inputs.large) {
            checkpoint.release(large.name, start * large.row_bytes..end * large.row_bytes);
        }
    }
    BLOCK.set(block);
    Ok(())
}
