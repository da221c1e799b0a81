//! Decoding little-endian float bytes into the float the operators compute in.

use half::f16;
use safetensors::Dtype;

use super::{Float, float_size};

/// Decodes little-endian `bytes` of a float `dtype` into f64 values.
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    let size = float_size(dtype)?;
    let mut values = vec![0.0; bytes.len() / size];
    decode_into(dtype, bytes, &mut values)?;
    Some(values)
}

/// Decodes little-endian `bytes` of a float `dtype` into `out` (as many values as both hold),
/// so a caller can reuse one buffer row after row.
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn decode_into<T: Float>(dtype: Dtype, bytes: &[u8], out: &mut [T]) -> Option<()> {
    fn elements<const N: usize, T>(bytes: &[u8], out: &mut [T], decode: impl Fn(&[u8]) -> T) {
        bytes
            .chunks_exact(N)
            .zip(out)
            .for_each(|(c, o)| *o = decode(c));
    }
    match dtype {
        Dtype::F32 => elements::<4, T>(bytes, out, f32_value),
        Dtype::F64 => elements::<8, T>(bytes, out, f64_value),
        Dtype::F16 => elements::<2, T>(bytes, out, f16_value),
        Dtype::BF16 => elements::<2, T>(bytes, out, bf16_value),
        _ => return None,
    }
    Some(())
}

/// `out[k] = f(a[k], b[k])` over the decoded elements of two rows of little-endian bytes of a
/// float `dtype`, in one pass: the element-wise work on two rows fused with their decoding,
/// with no row of f64 written in between. Decoding is [`decode_into`]'s.
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn decode_pair_into<T: Float>(
    dtype: Dtype,
    a: &[u8],
    b: &[u8],
    out: &mut [T],
    f: impl Fn(T, T) -> T,
) -> Option<()> {
    fn pairs<const N: usize, T>(
        a: &[u8],
        b: &[u8],
        out: &mut [T],
        decode: impl Fn(&[u8]) -> T,
        f: impl Fn(T, T) -> T,
    ) {
        a.chunks_exact(N)
            .zip(b.chunks_exact(N))
            .zip(out)
            .for_each(|((x, y), o)| *o = f(decode(x), decode(y)));
    }
    match dtype {
        Dtype::F32 => pairs::<4, T>(a, b, out, f32_value, f),
        Dtype::F64 => pairs::<8, T>(a, b, out, f64_value, f),
        Dtype::F16 => pairs::<2, T>(a, b, out, f16_value, f),
        Dtype::BF16 => pairs::<2, T>(a, b, out, bf16_value, f),
        _ => return None,
    }
    Some(())
}

// One element each, from a slice of its size (the callers' `chunks_exact`), written so that
// the loops calling them vectorise.

#[inline]
fn f32_value<T: Float>(c: &[u8]) -> T {
    T::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

#[inline]
fn f64_value<T: Float>(c: &[u8]) -> T {
    T::from_f64(f64::from_le_bytes([
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
    ]))
}

/// Through f32, which holds every f16 value exactly: the same value, by a conversion that
/// vectorises (half's `to_f64` handles each exponent case in turn).
#[inline]
fn f16_value<T: Float>(c: &[u8]) -> T {
    T::from_f32(f16::from_le_bytes([c[0], c[1]]).to_f32())
}

/// A bf16 is the upper half of the f32 with its bits (half's conversion does the same and
/// quiets a signalling NaN, which widening to f64 does too).
#[inline]
fn bf16_value<T: Float>(c: &[u8]) -> T {
    T::from_f32(f32::from_bits(
        u32::from(u16::from_le_bytes([c[0], c[1]])) << 16,
    ))
}
