//! Counting NaN and infinite values from their bit patterns, without decoding.

use rayon::prelude::*;
use safetensors::Dtype;

/// NaN and infinite values found in a float tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NonFinite {
    pub nan: usize,
    pub inf: usize,
    /// The index of the first non-finite element.
    pub first: usize,
}

/// Counts the NaN and infinite elements of little-endian `bytes` of a float `dtype` from their
/// bit patterns (no decoding), in parallel over pieces of the bytes. None when every element is
/// finite or the dtype is not float.
pub fn non_finite(dtype: Dtype, bytes: &[u8]) -> Option<NonFinite> {
    // (element size, exponent mask, mantissa mask), as u64 bit patterns.
    let (size, exponent, mantissa): (usize, u64, u64) = match dtype {
        Dtype::F16 => (2, 0x7c00, 0x03ff),
        Dtype::BF16 => (2, 0x7f80, 0x007f),
        Dtype::F32 => (4, 0x7f80_0000, 0x007f_ffff),
        Dtype::F64 => (8, 0x7ff0_0000_0000_0000, 0x000f_ffff_ffff_ffff),
        _ => return None,
    };
    // A multiple of every element size.
    const PIECE: usize = 1 << 20;
    let count = match size {
        2 => count_non_finite::<2>,
        4 => count_non_finite::<4>,
        _ => count_non_finite::<8>,
    };
    bytes
        .par_chunks(PIECE)
        .enumerate()
        .map(|(piece, chunk)| {
            count(chunk, exponent, mantissa).map(|mut f| {
                f.first += piece * (PIECE / size);
                f
            })
        })
        .reduce(
            || None,
            |a, b| match (a, b) {
                (Some(a), Some(b)) => Some(NonFinite {
                    nan: a.nan + b.nan,
                    inf: a.inf + b.inf,
                    first: a.first.min(b.first),
                }),
                (a, b) => a.or(b),
            },
        )
}

/// [`non_finite`] of one piece, for elements of `N` bytes (a constant, so that reading an
/// element compiles to one load).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn count_non_finite<const N: usize>(
    bytes: &[u8],
    exponent: u64,
    mantissa: u64,
) -> Option<NonFinite> {
    if !any_exponent_all_ones::<N>(bytes, exponent) {
        return None;
    }
    let mut found: Option<NonFinite> = None;
    for (i, element) in bytes.chunks_exact(N).enumerate() {
        let bits = load::<N>(element);
        if bits & exponent != exponent {
            continue;
        }
        let f = found.get_or_insert(NonFinite {
            first: i,
            ..NonFinite::default()
        });
        if bits & mantissa == 0 {
            f.inf += 1;
        } else {
            f.nan += 1;
        }
    }
    found
}

/// Whether an element of `N` bytes has every `exponent` bit set: almost every piece is all
/// finite, and this says so without branches, on integers of the element's width (so that the
/// loop vectorises; 64-bit lanes do not with the baseline instruction set).
fn any_exponent_all_ones<const N: usize>(bytes: &[u8], exponent: u64) -> bool {
    match N {
        2 => {
            let mask = exponent as u16;
            bytes
                .chunks_exact(2)
                .map(|e| u16::from(u16::from_le_bytes([e[0], e[1]]) & mask == mask))
                .fold(0, |any, x| any | x)
                != 0
        }
        4 => {
            let mask = exponent as u32;
            bytes
                .chunks_exact(4)
                .map(|e| u32::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & mask == mask))
                .fold(0, |any, x| any | x)
                != 0
        }
        _ => bytes
            .chunks_exact(N)
            .any(|e| load::<N>(e) & exponent == exponent),
    }
}

/// An element of `N` ≤ 8 little-endian bytes as a u64.
fn load<const N: usize>(element: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le[..N].copy_from_slice(element);
    u64::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::encode;

    #[test]
    fn non_finite_values_are_counted_from_their_bits() {
        let values = [
            1.0,
            f64::NAN,
            -f64::INFINITY,
            0.0,
            f64::INFINITY,
            65504.0 * 4.0,
        ];
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let bytes = encode(dtype, &values).unwrap_or_default();
            let found = non_finite(dtype, &bytes);
            // 4 × 65504 overflows f16 only.
            let inf = if dtype == Dtype::F16 { 3 } else { 2 };
            assert_eq!(
                found,
                Some(NonFinite {
                    nan: 1,
                    inf,
                    first: 1
                }),
                "{dtype:?}"
            );
            let finite = encode(dtype, &[1.0, -2.0, 0.0]).unwrap_or_default();
            assert_eq!(non_finite(dtype, &finite), None, "{dtype:?}");
        }
        assert_eq!(non_finite(Dtype::I32, &[0xff; 8]), None);
    }
}
