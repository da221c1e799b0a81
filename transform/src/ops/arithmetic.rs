//! The element-wise arithmetic of the operators on rows of values: a gather's sums and
//! divisions, the depth mean and interpolation, each in an order that keeps them exact.

use crate::dtype::Float;

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
        [single] if divisor == 1.0 => dst.copy_from_slice(row(*single)),
        [single] => {
            let divisor = T::from_f64(divisor);
            dst.iter_mut()
                .zip(row(*single))
                .for_each(|(d, &s)| *d = s / divisor);
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

/// [`combine`] of rows of one value: the same operations in the same order.
pub(super) fn combine_one<T: Float>(sources: &[usize], divisor: f64, row: &[T]) -> T {
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
    let n = T::from_f64(n);
    dst.iter_mut()
        .zip(first)
        .for_each(|(d, &f)| *d = f + *d / n);
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
