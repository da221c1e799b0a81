//! The operators, as gathers, averages and splits over rows and blocks (never dense matrix
//! products). Values are f64, or f32 for most bf16 tensors; see [`crate::dtype::Float`].

use crate::dtype::Float;
use crate::scheme::Grouping;

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

/// One output row of a gather: `dst = (Σ row(j) for j in sources) / divisor`, with the sum of
/// a single row exact and a mean taken by [`shifted_mean`]. Every row must be `dst`'s length.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn combine<'a, T: Float>(
    dst: &mut [T],
    sources: &[usize],
    divisor: f64,
    row: impl Fn(usize) -> &'a [T],
) {
    match sources {
        [single] => {
            let src = row(*single);
            match exact_reciprocal(divisor) {
                Some(1.0) => dst.copy_from_slice(src),
                Some(r) => {
                    let r = T::from_f64(r);
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s * r);
                }
                None => {
                    let divisor = T::from_f64(divisor);
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s / divisor);
                }
            }
        }
        // A sum, left to right; the first two rows in one pass.
        [first, second, rest @ ..] if divisor == 1.0 => {
            let (first, second) = (row(*first), row(*second));
            dst.iter_mut()
                .zip(first.iter().zip(second))
                .for_each(|(d, (&a, &b))| *d = a + b);
            for &j in rest {
                dst.iter_mut().zip(row(j)).for_each(|(d, &s)| *d += s);
            }
        }
        [first, rest @ ..] => {
            shifted_mean(dst, row(*first), rest.iter().map(|&j| row(j)), divisor);
        }
        [] => dst.fill(T::ZERO),
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

/// [`combine`] of rows of one value: the same operations in the same order.
fn combine_one<T: Float>(sources: &[usize], divisor: f64, row: &[T]) -> T {
    let value = |j: &usize| row.get(*j).copied().unwrap_or(T::ZERO);
    let divisor_value = T::from_f64(divisor);
    match sources {
        [single] => {
            let v = value(single);
            if divisor != 1.0 { v / divisor_value } else { v }
        }
        [first, rest @ ..] => {
            let first = value(first);
            if divisor == 1.0 {
                rest.iter().fold(first, |d, j| d + value(j))
            } else {
                let d = rest.iter().fold(T::ZERO, |d, j| d + (value(j) - first));
                first + d / divisor_value
            }
        }
        [] => T::ZERO,
    }
}

/// `dst = first + Σ (row − first) / n`: the mean, computed so that the mean of equal values
/// is that value exactly in any precision (the naive Σ/n rounds 3x/3 for f64 data).
fn shifted_mean<'a, T: Float>(
    dst: &mut [T],
    first: &[T],
    mut rows: impl Iterator<Item = &'a [T]>,
    n: f64,
) {
    let second = rows.next();
    let third = rows.next();
    if let (Some(second), None, 2.0) = (second, &third, n) {
        // The same operations, one pass.
        dst.iter_mut()
            .zip(first.iter().zip(second))
            .for_each(|(d, (&f, &s))| *d = pair_mean(f, s));
        return;
    }
    let rows = third.into_iter().chain(rows);
    // The first difference is added to 0 rather than stored, as the sum of all of them would
    // (0 + −0 is +0).
    match second {
        Some(row) => dst
            .iter_mut()
            .zip(row.iter().zip(first))
            .for_each(|(d, (&r, &f))| *d = T::ZERO + (r - f)),
        None => dst.iter_mut().for_each(|d| *d = T::ZERO),
    }
    for row in rows {
        dst.iter_mut()
            .zip(row.iter().zip(first))
            .for_each(|(d, (&r, &f))| *d += r - f);
    }
    match exact_reciprocal(n) {
        Some(r) => {
            let r = T::from_f64(r);
            dst.iter_mut()
                .zip(first)
                .for_each(|(d, &f)| *d = f + *d * r);
        }
        None => {
            let n = T::from_f64(n);
            dst.iter_mut()
                .zip(first)
                .for_each(|(d, &f)| *d = f + *d / n);
        }
    }
}

/// `1 / divisor` when multiplying by it is dividing by `divisor`, bit for bit: for a power of
/// two, x / 2^k and x · 2^−k are the same real number, so rounded they are equal. A product
/// costs a fraction of a division, and group sizes are mostly powers of two.
fn exact_reciprocal(divisor: f64) -> Option<f64> {
    const MANTISSA: u64 = (1 << 52) - 1;
    (divisor.is_normal() && divisor.to_bits() & MANTISSA == 0).then(|| 1.0 / divisor)
}

/// Depth coalescing: `dst` = the element-wise mean of the group's layers (a single layer is
/// copied).
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn mean_into<T: Float, L: AsRef<[T]>>(dst: &mut [T], layers: &[L]) {
    match layers {
        [] => {}
        [single] => dst.copy_from_slice(single.as_ref()),
        [first, rest @ ..] => {
            let rest = rest.iter().map(AsRef::as_ref);
            shifted_mean(dst, first.as_ref(), rest, layers.len() as f64);
        }
    }
}

/// The mean of two values as [`mean_into`] and [`combine`] compute it ([`shifted_mean`] of two
/// rows, element by element), for kernels that fuse it with decoding.
#[inline]
pub fn pair_mean<T: Float>(first: T, second: T) -> T {
    first + (T::ZERO + (second - first)) * T::HALF
}

/// Interpolation: `decoalesced` becomes θ = (1 − α)·large + α·decoalesced.
///
/// The end points return an input unchanged (α = 0: `large`, α = 1: `decoalesced`), bit for
/// bit, including signed zeros that the formula would turn into +0.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn interpolate_into<T: Float>(large: &[T], decoalesced: &mut [T], alpha: f64) {
    if alpha == 0.0 {
        decoalesced.copy_from_slice(large);
    } else if alpha != 1.0 {
        let alpha = T::from_f64(alpha);
        decoalesced
            .iter_mut()
            .zip(large)
            .for_each(|(d, &l)| *d = interpolate(l, *d, alpha));
    }
}

/// One value of [`interpolate_into`] for α in (0, 1), for kernels that fuse it with decoding.
#[inline]
pub fn interpolate<T: Float>(large: T, decoalesced: T, alpha: T) -> T {
    (T::ONE - alpha) * large + alpha * decoalesced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::SchemeSpec;

    fn grouping(groups: Vec<Vec<usize>>, large: usize) -> Grouping {
        let small = groups.len();
        Grouping::from_groups(groups, large, small, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn mean_and_sum_along_rows_and_columns() {
        // 2 x 4 matrix, columns grouped [[0,2],[1,3]].
        let g = grouping(vec![vec![0, 2], vec![1, 3]], 4);
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(
            Gather::new(AxisOp::Mean, &g)
                .apply(&data, &[2, 4], 1)
                .unwrap(),
            [2.0, 3.0, 6.0, 7.0]
        );
        assert_eq!(
            Gather::new(AxisOp::Sum, &g)
                .apply(&data, &[2, 4], 1)
                .unwrap(),
            [4.0, 6.0, 12.0, 14.0]
        );
        // rows grouped [[0,1]] of a 2 x 2.
        let rows = grouping(vec![vec![0, 1]], 2);
        assert_eq!(
            Gather::new(AxisOp::Mean, &rows)
                .apply(&[1.0, 2.0, 3.0, 4.0], &[2, 2], 0)
                .unwrap(),
            [2.0, 3.0]
        );
    }

    #[test]
    fn duplicate_and_split_invert_mean_and_sum() {
        let g = grouping(vec![vec![0, 2], vec![1, 3]], 4);
        let small = [1.0, 2.0, 3.0, 4.0];
        let dup = Gather::new(AxisOp::Duplicate, &g)
            .apply(&small, &[2, 2], 1)
            .unwrap();
        assert_eq!(dup, [1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
        let split = Gather::new(AxisOp::Split, &g)
            .apply(&small, &[2, 2], 1)
            .unwrap();
        assert_eq!(split, [0.5, 1.0, 0.5, 1.0, 1.5, 2.0, 1.5, 2.0]);
        assert_eq!(
            Gather::new(AxisOp::Mean, &g)
                .apply(&dup, &[2, 4], 1)
                .unwrap(),
            small
        );
        assert_eq!(
            Gather::new(AxisOp::Sum, &g)
                .apply(&split, &[2, 4], 1)
                .unwrap(),
            small
        );
    }

    #[test]
    fn a_gather_of_whole_blocks_is_applied_block_by_block_with_the_same_result() {
        // Value u of 12 goes with value u + 6: blocks of 6.
        let values = grouping(
            vec![
                vec![0, 6],
                vec![1, 7],
                vec![2, 8],
                vec![3, 9],
                vec![4, 10],
                vec![5, 11],
            ],
            12,
        );
        let data: Vec<f64> = (0..24).map(|i| f64::from(i) * 0.37 - 2.0).collect();
        for op in [AxisOp::Mean, AxisOp::Sum, AxisOp::Duplicate, AxisOp::Split] {
            let gather = Gather::new(op, &values);
            let (coarse, b) = gather.blocks();
            assert_eq!(b, 6, "{op:?}");
            let n = gather.input_len();
            let whole = gather.apply(&data[..2 * n], &[2, n], 1).unwrap();
            let blocked = coarse.apply(&data[..2 * n], &[2, n / b, b], 1).unwrap();
            assert_eq!(whole, blocked, "{op:?}");
        }
        // Nothing to block: the gather itself.
        let odd = grouping(vec![vec![0, 1], vec![2]], 3);
        assert_eq!(Gather::new(AxisOp::Mean, &odd).blocks().1, 1);
    }

    #[test]
    fn fused_axes_map_each_part_separately() {
        let g =
            Grouping::new(&SchemeSpec::Adjacent, 2, 1, "head").unwrap_or_else(|e| panic!("{e}"));
        let fused = Gather::concat(vec![
            Gather::new(AxisOp::Mean, &g),
            Gather::new(AxisOp::Mean, &g),
        ]);
        assert_eq!(
            fused.apply(&[1.0, 3.0, 10.0, 30.0], &[4], 0).unwrap(),
            [2.0, 20.0]
        );
        // Data that does not match the shape is an error, not a panic.
        assert_eq!(fused.apply(&[1.0, 3.0], &[4], 0), Err(GatherError::Shape));
        assert_eq!(fused.apply(&[1.0; 4], &[4], 1), Err(GatherError::Shape));
    }

    #[test]
    fn interpolation_end_points_keep_signed_zero() {
        let large = [-0.0f64, 1.0];
        let small = [0.0, 3.0];
        let interpolate = |alpha| {
            let mut out = small;
            interpolate_into(&large, &mut out, alpha);
            out
        };
        assert_eq!(interpolate(0.0)[0].to_bits(), (-0.0f64).to_bits());
        assert_eq!(interpolate(1.0), small);
        assert_eq!(interpolate(0.25), [0.0, 1.5]);
    }

    #[test]
    fn products_by_exact_reciprocals_are_the_divisions_bit_for_bit() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
        let mut values: Vec<f64> = (0..200_000)
            .map(|_| f64::from_bits(rng.random::<u64>()))
            .collect();
        values.extend([
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::INFINITY,
        ]);
        let rows: Vec<Vec<f64>> = (0..3)
            .map(|k| values.iter().map(|v| v * [1.0, -0.5, 3.0][k]).collect())
            .collect();
        let same = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan())
        };
        for divisor in [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 0.5] {
            let mut ours = vec![0.0; values.len()];
            combine(&mut ours, &[0], divisor, |_| &values);
            let plain: Vec<f64> = values.iter().map(|v| v / divisor).collect();
            assert!(same(&ours, &plain), "split by {divisor}");
        }
        for n in 2..=3 {
            let layers: Vec<&[f64]> = rows.iter().take(n).map(Vec::as_slice).collect();
            let mut ours = vec![0.0; values.len()];
            mean_into(&mut ours, &layers);
            let plain: Vec<f64> = (0..values.len())
                .map(|i| {
                    let first = layers[0][i];
                    let d = layers[1..].iter().fold(0.0, |d, l| d + (l[i] - first));
                    first + d / n as f64
                })
                .collect();
            assert!(same(&ours, &plain), "mean of {n}");
        }
    }

    #[test]
    fn depth_mean_of_equal_layers_is_exact() {
        let x = [0.1, -3.7, 1e300];
        let mut out = [0.0; 3];
        mean_into(&mut out, &[&x, &x, &x]);
        assert_eq!(out, x);
        mean_into(&mut out, &[&[1.0, 2.0, 3.0], &[3.0, 4.0, 5.0]]);
        assert_eq!(out, [2.0, 3.0, 4.0]);
    }
}
