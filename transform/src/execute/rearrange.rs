//! A de-coalesce's rows as bytes of single input rows, moved and divided by powers of two
//! without decoding most values.

use std::sync::Arc;

use safetensors::Dtype;

use crate::dtype::{self, Float, element_size};
use crate::ops::{self, Gather};
use crate::plan::AxisGather;

/// An output tensor whose rows are the bytes of single rows of one input tensor of the same
/// dtype, moved whole blocks at a time and divided by powers of two: a de-coalesce, which
/// duplicates `out` axes and splits `in` axes into groups of 2^k (and copies layers). Values
/// are divided in their own encoding ([`dtype::divide_by_power_of_two`]), with the bits the
/// decoding and f64 arithmetic of `Rows::resize_row` give; most values are not decoded.
pub(super) struct Rearrange {
    dtype: Dtype,
    /// Per output row, when axis 0 is gathered: its input row and the power of two it is
    /// divided by (otherwise row i is input row i, undivided).
    rows: Option<Vec<(usize, u32)>>,
    /// The transformed axis of a row, if any: the row seen as (outer, blocks, block bytes).
    columns: Option<Columns>,
}

struct Columns {
    outer: usize,
    input_blocks: usize,
    /// Per output block: its input block and the power of two it is divided by.
    blocks: Vec<(usize, u32)>,
    block_bytes: usize,
}

impl Rearrange {
    /// None unless every gather takes single elements and divides them by powers of two, and
    /// at most one axis of a row changes.
    pub(super) fn new(
        rows_gather: Option<&Gather>,
        row_gathers: &[Option<Arc<AxisGather>>],
        in_row_shape: &[usize],
        dtype: Dtype,
    ) -> Option<Self> {
        let single_sources = |gather: &Gather| {
            (0..gather.output_len())
                .map(|i| single_source(gather, i))
                .collect::<Option<Vec<_>>>()
        };
        let rows = match rows_gather {
            Some(gather) => Some(single_sources(gather)?),
            None => None,
        };
        let mut changed = row_gathers
            .iter()
            .enumerate()
            .filter_map(|(axis, g)| g.as_ref().map(|g| (axis, &g.blocks)));
        let columns = match (changed.next(), changed.next()) {
            (None, _) => None,
            (Some((axis, (gather, block))), None) => {
                let outer: usize = in_row_shape.get(..axis)?.iter().product();
                let inner: usize = in_row_shape.get(axis + 1..)?.iter().product();
                Some(Columns {
                    outer,
                    input_blocks: gather.input_len(),
                    blocks: single_sources(gather)?,
                    block_bytes: block * inner * element_size(dtype),
                })
            }
            (Some(_), Some(_)) => return None,
        };
        Some(Rearrange {
            dtype,
            rows,
            columns,
        })
    }

    /// The input row of output row `i` and the power of two it is divided by.
    pub(super) fn source_row(&self, i: usize) -> Option<(usize, u32)> {
        match &self.rows {
            Some(rows) => rows.get(i).copied(),
            None => Some((i, 0)),
        }
    }

    /// Hands each block of the output row made from input row `row` divided by 2^`k` to `f`:
    /// its input bytes, the index of its first value in the output row and its power of two.
    /// Returns the number of output values, or None if `row` does not have the planned length.
    fn each_block(
        &self,
        row: &[u8],
        k: u32,
        mut f: impl FnMut(&[u8], usize, u32) -> Option<()>,
    ) -> Option<usize> {
        let size = element_size(self.dtype);
        let Some(c) = &self.columns else {
            f(row, 0, k)?;
            return Some(row.len() / size);
        };
        let in_len = c.input_blocks * c.block_bytes;
        if row.len() != c.outer * in_len {
            return None;
        }
        let block_values = c.block_bytes / size;
        let mut at = 0;
        for src in row.chunks_exact(in_len.max(1)) {
            for &(block, kb) in &c.blocks {
                let start = block * c.block_bytes;
                f(src.get(start..start + c.block_bytes)?, at, k + kb)?;
                at += block_values;
            }
        }
        Some(at)
    }

    /// Output row `out` (bytes) from input row `row` divided by 2^`k`.
    pub(super) fn row(&self, row: &[u8], k: u32, out: &mut [u8]) -> Option<()> {
        let size = element_size(self.dtype);
        let values = self.each_block(row, k, |src, at, k| {
            let dst = out.get_mut(at * size..at * size + src.len())?;
            dtype::divide_by_power_of_two(self.dtype, src, k, dst)
        })?;
        (values * size == out.len()).then_some(())
    }

    /// Output row `out` (values) interpolated between the saved large row `large` (bytes) and
    /// input row `row` divided by 2^`k`, decoded together as `Rows::compute` would decode
    /// them, with the same arithmetic: (1 − α)·large + α·(value · 2^−k).
    pub(super) fn interpolated_row<T: Float>(
        &self,
        row: &[u8],
        k: u32,
        large: &[u8],
        alpha: f64,
        out: &mut [T],
    ) -> Option<()> {
        let size = element_size(self.dtype);
        let alpha = T::from_f64(alpha);
        let values = self.each_block(row, k, |src, at, k| {
            let n = src.len() / size;
            let scale = T::from_f64(0.5f64.powi(k as i32));
            dtype::decode_pair_into(
                self.dtype,
                large.get(at * size..(at + n) * size)?,
                src,
                out.get_mut(at..at + n)?,
                |l, v| ops::interpolate(l, v * scale, alpha),
            )
        })?;
        (values == out.len() && values * size == large.len()).then_some(())
    }
}

/// The only source of output index `i` of `gather` and the power of two it is divided by, if
/// it has one source and such a divisor.
fn single_source(gather: &Gather, i: usize) -> Option<(usize, u32)> {
    match gather.source(i)? {
        (&[j], divisor) => Some((j, power_of_two(divisor)?)),
        _ => None,
    }
}

/// k where `divisor` = 2^k.
fn power_of_two(divisor: f64) -> Option<u32> {
    let k = divisor.log2().round();
    ((0.0..64.0).contains(&k) && 2f64.powi(k as i32) == divisor).then_some(k as u32)
}
