//! Float storage types: decoding to and encoding from the float the operators compute in.
//!
//! Arithmetic runs in f64, and in f32 for bf16 tensors computed from bf16 tensors without
//! interpolation (see [`Float`]): either way a mean of equal values is exact and the round trip
//! coalesce(de-coalesce(θ)) returns θ bit for bit for groups of two.
//!
//! This file defines the float types; the conversions are in `decode.rs` and `encode.rs`, the
//! division by powers of two in `power_of_two.rs` and the scan for NaN and infinities in
//! `non_finite.rs`.

use std::ops::{Add, AddAssign, Div, Mul, Sub};

use safetensors::Dtype;

mod decode;
mod encode;
#[cfg(test)]
mod encoding_tests;
mod non_finite;
mod power_of_two;

pub use decode::{decode, decode_into, decode_pair_into};
pub use encode::{BF16_OVERFLOW_BITS, encode, encode_bf16_largest_magnitude, encode_into};
use encode::{encode_f32_into, encode_f64_into};
pub use non_finite::{NonFinite, non_finite};
pub use power_of_two::divide_by_power_of_two;

/// Whether the operators can compute on this dtype (other tensors pass through unchanged).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// A float the operators compute in: f64, or f32 for a bf16 tensor computed from bf16 tensors
/// without interpolation (a bf16 is an f32 with its lower 16 bits zero). Computing such a
/// tensor in f32 takes the CPU about half the time per value (twice the values per vector
/// instruction) and changes few results: sums and differences of bf16 values are exact in f32
/// unless their exponents are 16 or more apart, and a result rounded to bf16 keeps 8 of f32's
/// 24 bits. Means of equal values, copies, splits into powers of two and the sums that undo
/// them stay exact, so every exactness property of the operators holds in either.
pub trait Float:
    Copy
    + Default
    + PartialEq
    + Send
    + Sync
    + std::fmt::Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    /// The value nearest `v` (exact for the group sizes and α that the operators use as
    /// f64).
    fn from_f64(v: f64) -> Self;
    /// `v` exactly.
    fn from_f32(v: f32) -> Self;
    fn is_finite(self) -> bool;
    /// Encodes `values` into little-endian bytes of a float `dtype` in `out` (round to
    /// nearest even; as many values as both hold). None for a dtype that is not a float one.
    fn encode_into(dtype: Dtype, values: &[Self], out: &mut [u8]) -> Option<()>;
}

impl Float for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const HALF: f64 = 0.5;

    #[inline]
    fn from_f64(v: f64) -> f64 {
        v
    }

    #[inline]
    fn from_f32(v: f32) -> f64 {
        f64::from(v)
    }

    #[inline]
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }

    fn encode_into(dtype: Dtype, values: &[f64], out: &mut [u8]) -> Option<()> {
        encode_f64_into(dtype, values, out)
    }
}

impl Float for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const HALF: f32 = 0.5;

    #[inline]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }

    #[inline]
    fn from_f32(v: f32) -> f32 {
        v
    }

    #[inline]
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }

    fn encode_into(dtype: Dtype, values: &[f32], out: &mut [u8]) -> Option<()> {
        encode_f32_into(dtype, values, out)
    }
}

/// The element size of a float dtype the operators compute on.
fn float_size(dtype: Dtype) -> Option<usize> {
    is_float(dtype).then(|| element_size(dtype))
}

/// The size of one element in bytes, for any safetensors dtype whose elements are whole bytes.
pub fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

/// The bytes of a tensor of `dtype` and `shape` (sub-byte dtypes such as F4 packed), or None
/// when the count overflows or is not a whole number of bytes.
pub fn byte_len(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    let elements = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
    let bits = elements.checked_mul(dtype.bitsize())?;
    bits.is_multiple_of(8).then_some(bits / 8)
}

/// The dtype name as safetensors headers write it (`F32`, `BF16`, ...).
pub fn name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lengths_pack_sub_byte_dtypes_and_refuse_overflow() {
        assert_eq!(byte_len(Dtype::F32, &[2, 3]), Some(24));
        assert_eq!(byte_len(Dtype::F4, &[2, 3]), Some(3));
        assert_eq!(byte_len(Dtype::F4, &[3]), None);
        assert_eq!(byte_len(Dtype::F32, &[usize::MAX, 2]), None);
        assert_eq!(byte_len(Dtype::F32, &[]), Some(4));
    }

    #[test]
    fn integer_dtypes_are_not_float() {
        assert!(!is_float(Dtype::I64));
        assert!(decode(Dtype::I64, &[0; 8]).is_none());
    }
}
