//! The operators, as gathers, averages and splits over rows and blocks (never dense matrix
//! products). Values are f64, or f32 for most bf16 tensors; see [`crate::dtype::Float`].
//!
//! This file defines the gathers along an axis; their arithmetic on rows, the depth mean and
//! interpolation are in `arithmetic.rs`.

use crate::dtype::Float;
use crate::scheme::Grouping;

mod arithmetic;
#[cfg(test)]
mod arithmetic_tests;
#[cfg(test)]
mod gather_tests;

use arithmetic::combine_one;
pub use arithmetic::{combine, interpolate, interpolate_into, mean_into, pair_mean};

/// What happens along one axis of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AxisOp {
    /// Coalescing an `out` axis: small[g] = mean of large[u] over u in g.
    Mean,
    /// Coalescing an `in` axis: small[g] = sum of large[u] over u in g.
    Sum,
    /// De-coalescing an `out` axis: large[u] = small[g(u)].
    Duplicate,
    /// De-coalescing an `in` axis: large[u] = small[g(u)] / |g(u)|.
    Split,
}

impl AxisOp {
    pub fn name(self) -> &'static str {
        match self {
            AxisOp::Mean => "mean",
            AxisOp::Sum => "sum",
            AxisOp::Duplicate => "dup",
            AxisOp::Split => "split",
        }
    }
}

/// A gather along one axis: output index i = (Σ input[j] for j in sources(i)) / divisor[i].
#[derive(Debug, Clone)]
pub struct Gather {
    /// The sources of every output index, one after the other: a gather is built for every
    /// tensor of a conversion, and one list per index cost more to allocate and free than the
    /// small tensors take to compute.
    indices: Vec<usize>,
    /// Output index i's sources are `indices[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
    divisors: Vec<f64>,
    input_len: usize,
    /// Whether every source index is below `input_len`, checked once at construction so that
    /// applying the gather row after row need not.
    in_bounds: bool,
}

impl Gather {
    /// The gather that applies `op` with an element-level grouping (large → small).
    pub fn new(op: AxisOp, grouping: &Grouping) -> Gather {
        match op {
            AxisOp::Mean | AxisOp::Sum => Gather::checked(
                grouping.groups().iter().map(|g| {
                    let divisor = if op == AxisOp::Mean {
                        g.len() as f64
                    } else {
                        1.0
                    };
                    (g.iter().copied(), divisor)
                }),
                grouping.large(),
            ),
            AxisOp::Duplicate | AxisOp::Split => Gather::checked(
                (0..grouping.large()).map(|u| {
                    let owner = grouping.owner(u);
                    let divisor = match (op, grouping.groups().get(owner)) {
                        (AxisOp::Split, Some(g)) => g.len() as f64,
                        _ => 1.0,
                    };
                    (std::iter::once(owner), divisor)
                }),
                grouping.small(),
            ),
        }
    }

    /// The gather whose output index i sums the i-th sources and divides them by the i-th
    /// divisor.
    fn checked<S: IntoIterator<Item = usize>>(
        sources: impl Iterator<Item = (S, f64)>,
        input_len: usize,
    ) -> Gather {
        let mut indices = Vec::new();
        let mut starts = vec![0];
        let mut divisors = Vec::new();
        for (s, divisor) in sources {
            indices.extend(s);
            starts.push(indices.len());
            divisors.push(divisor);
        }
        let in_bounds = indices.iter().all(|&j| j < input_len);
        Gather {
            indices,
            starts,
            divisors,
            input_len,
            in_bounds,
        }
    }

    /// Concatenates gathers of consecutive parts of a fused axis (GPT-2's q|k|v).
    pub fn concat(parts: Vec<Gather>) -> Gather {
        let mut offset = 0;
        let mut shifted = Vec::with_capacity(parts.len());
        for part in &parts {
            shifted.push(offset);
            offset += part.input_len;
        }
        Gather::checked(
            parts.iter().zip(shifted).flat_map(|(part, shift)| {
                (0..part.output_len()).filter_map(move |i| {
                    let (sources, divisor) = part.source(i)?;
                    Some((sources.iter().map(move |j| j + shift), divisor))
                })
            }),
            offset,
        )
    }

    /// The identity on an axis of length `n`.
    pub fn identity(n: usize) -> Gather {
        Gather::checked((0..n).map(|i| (std::iter::once(i), 1.0)), n)
    }

    pub fn input_len(&self) -> usize {
        self.input_len
    }

    pub fn output_len(&self) -> usize {
        self.divisors.len()
    }

    /// The input indices summed into output index `i`, and their divisor.
    pub fn source(&self, i: usize) -> Option<(&[usize], f64)> {
        let (start, end) = (*self.starts.get(i)?, *self.starts.get(i + 1)?);
        Some((self.indices.get(start..end)?, *self.divisors.get(i)?))
    }

    /// Every output index's sources and divisor, in order.
    fn sources(&self) -> impl Iterator<Item = (&[usize], f64)> {
        (0..self.output_len()).filter_map(|i| self.source(i))
    }

    /// The same gather over blocks of `b` consecutive indices, with the largest such `b`:
    /// output block k is the gather of whole input blocks, index for index (head-sized blocks
    /// for the model spaces). Applying the coarse gather to the axis split into (n / b, b)
    /// does the same operations on the same values, b at a time instead of one.
    pub fn blocks(&self) -> (Gather, usize) {
        let g = gcd(self.input_len, self.output_len());
        // The divisors of g, largest first.
        let mut sizes: Vec<usize> = (1..)
            .take_while(|d| d * d <= g)
            .filter(|d| g.is_multiple_of(*d))
            .flat_map(|d| [d, g / d])
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let Some(b) = sizes.into_iter().find(|&b| b > 1 && self.is_blocked(b)) else {
            return (self.clone(), 1);
        };
        let blocks = (0..self.output_len() / b)
            .filter_map(|k| self.source(k * b))
            .map(|(s, d)| (s.iter().map(move |j| j / b), d));
        (Gather::checked(blocks, self.input_len / b), b)
    }

    /// Whether every block of `b` output indices reads whole input blocks of `b`, in order.
    fn is_blocked(&self, b: usize) -> bool {
        self.output_len().is_multiple_of(b)
            && (0..self.output_len()).step_by(b).all(|k| {
                let Some((head, divisor)) = self.source(k) else {
                    return false;
                };
                head.iter().all(|j| j % b == 0)
                    && (1..b).all(|r| {
                        self.source(k + r).is_some_and(|(row, d)| {
                            d == divisor
                                && row.len() == head.len()
                                && row.iter().zip(head).all(|(j, h)| *j == h + r)
                        })
                    })
            })
    }

    /// Applies the gather along `axis` of a row-major tensor of `shape`; returns the new data
    /// (the caller updates the shape). `shape[axis]` must equal `input_len()` and `data` must
    /// hold the product of `shape` values.
    pub fn apply(
        &self,
        data: &[f64],
        shape: &[usize],
        axis: usize,
    ) -> Result<Vec<f64>, GatherError> {
        let len = self.output_size(shape, axis)?;
        let mut out = Vec::new();
        out.try_reserve_exact(len)
            .map_err(|_| GatherError::OutOfMemory(len.saturating_mul(8)))?;
        out.resize(len, 0.0);
        self.apply_into(data, shape, axis, &mut out)?;
        Ok(out)
    }

    /// The number of values the gather along `axis` of a tensor of `shape` gives.
    pub fn output_size(&self, shape: &[usize], axis: usize) -> Result<usize, GatherError> {
        let (outer, inner) = self.around(shape, axis)?;
        outer
            .checked_mul(self.output_len())
            .and_then(|n| n.checked_mul(inner))
            .ok_or(GatherError::OutOfMemory(usize::MAX))
    }

    /// The sizes before and after `axis` of `shape`, whose `axis` must be the gather's input.
    fn around(&self, shape: &[usize], axis: usize) -> Result<(usize, usize), GatherError> {
        let (Some(before), Some(after)) = (shape.get(..axis), shape.get(axis + 1..)) else {
            return Err(GatherError::Shape);
        };
        if shape.get(axis) != Some(&self.input_len) {
            return Err(GatherError::Shape);
        }
        let product = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .ok_or(GatherError::Shape)
        };
        Ok((product(before)?, product(after)?))
    }

    /// [`Gather::apply`] into `out`, which must hold [`Gather::output_size`] values (every one
    /// is written), so that a caller can reuse one buffer.
    pub fn apply_into<T: Float>(
        &self,
        data: &[T],
        shape: &[usize],
        axis: usize,
        out: &mut [T],
    ) -> Result<(), GatherError> {
        let (outer, inner) = self.around(shape, axis)?;
        let n_in = self.input_len;
        let n_out = self.output_len();
        let expected = outer.checked_mul(n_in).and_then(|n| n.checked_mul(inner));
        let len = outer.checked_mul(n_out).and_then(|n| n.checked_mul(inner));
        if expected != Some(data.len()) || len != Some(out.len()) {
            return Err(GatherError::Shape);
        }
        // Every source row lies inside a block: with this checked, the slicing below cannot
        // go out of bounds.
        if !self.in_bounds {
            return Err(GatherError::Shape);
        }
        if n_in == 0 {
            // Nothing to gather from: every output sums no value.
            out.fill(T::ZERO);
            return Ok(());
        }
        if inner == 1 {
            // One value per row (the last axis): the same arithmetic without slices.
            for (src, dst) in data.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
                for ((sources, divisor), d) in self.sources().zip(dst) {
                    *d = combine_one(sources, divisor, src);
                }
            }
            return Ok(());
        }
        for (src_block, dst_block) in data
            .chunks_exact(n_in * inner)
            .zip(out.chunks_exact_mut(n_out * inner))
        {
            let row = |j: usize| &src_block[j * inner..(j + 1) * inner];
            for ((sources, divisor), dst) in self.sources().zip(dst_block.chunks_exact_mut(inner)) {
                combine(dst, sources, divisor, row);
            }
        }
        Ok(())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Why a gather could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatherError {
    /// The data does not have the shape the gather expects.
    Shape,
    /// The output (this many bytes) could not be allocated.
    OutOfMemory(usize),
}
