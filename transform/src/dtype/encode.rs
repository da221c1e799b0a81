//! Encoding computed values into little-endian float bytes, rounding to nearest even.

use half::{bf16, f16};
use safetensors::Dtype;

use super::{Float, float_size};

/// Encodes f64 values into little-endian bytes of a float `dtype` (round to nearest even).
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn encode(dtype: Dtype, values: &[f64]) -> Option<Vec<u8>> {
    let size = float_size(dtype)?;
    let mut bytes = vec![0; values.len() * size];
    encode_into(dtype, values, &mut bytes)?;
    Some(bytes)
}

/// Encodes `values` into little-endian bytes of a float `dtype` in `out` (round to nearest
/// even; as many values as both hold).
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn encode_into<T: Float>(dtype: Dtype, values: &[T], out: &mut [u8]) -> Option<()> {
    T::encode_into(dtype, values, out)
}

/// [`encode_into`] from f64.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub(super) fn encode_f64_into(dtype: Dtype, values: &[f64], out: &mut [u8]) -> Option<()> {
    match dtype {
        Dtype::F32 => out
            .chunks_exact_mut(4)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&(v as f32).to_le_bytes())),
        Dtype::F64 => out
            .chunks_exact_mut(8)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::F16 => out
            .chunks_exact_mut(2)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&f16::from_f64(v).to_le_bytes())),
        Dtype::BF16 => {
            // Branch-free, so the loop vectorises; then half itself for the rare value the
            // fast conversion does not match it on.
            out.chunks_exact_mut(2)
                .zip(values)
                .for_each(|(o, &v)| o.copy_from_slice(&f64_to_bf16_bits(v).to_le_bytes()));
            let special = values
                .iter()
                .map(|&v| u64::from(needs_half(v)))
                .sum::<u64>();
            if special != 0 {
                for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                    if needs_half(v) {
                        o.copy_from_slice(&bf16::from_f64(v).to_le_bytes());
                    }
                }
            }
        }
        _ => return None,
    }
    Some(())
}

/// `bf16::from_f64(v).to_bits()`, bit for bit, unless [`needs_half`] says otherwise, in a few
/// operations without branches: half's general conversion takes a branch per case and was the
/// largest cost of writing bf16.
///
/// half rounds from the upper 32 bits of the f64 (sign, exponent, the top 20 mantissa bits): to
/// nearest, ties to even, with the lower bits ignored. With the lower bits cleared the f64 is an
/// f32 exactly wherever that f32 is normal (20 mantissa bits fit in 23), so the conversion to
/// f32 is exact there, and the usual f32 → bf16 rounding of its bits gives half's result. Zeros
/// and infinities come out right; so do finite values beyond f32's range, which convert to
/// infinity as half rounds them.
fn f64_to_bf16_bits(v: f64) -> u16 {
    // A NaN's result is replaced by half's.
    round_to_bf16_bits(f64::from_bits(v.to_bits() & !0xffff_ffff) as f32)
}

/// The upper half of `v`'s bits rounded to nearest, ties to even: its bf16 bits, unless `v`
/// is NaN (rounding can carry a NaN's payload into an infinity, or wrap a negative NaN's).
#[inline]
fn round_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16
}

/// Whether [`f64_to_bf16_bits`] may differ from half for `v`: NaN (whose payload can sit in the
/// cleared bits) and magnitudes below f32's smallest normal, where converting to a subnormal
/// f32 would round twice.
fn needs_half(v: f64) -> bool {
    let magnitude = v.abs();
    !(magnitude >= f64::from(f32::MIN_POSITIVE) || magnitude == 0.0)
}

/// f32 values encoded as little-endian bf16 into `out`, in the same pass as their largest
/// magnitude, which it returns as f32 bits (a NaN's are above infinity's; 0 if there are no
/// values). The bytes are [`encode_into`]'s when no value is NaN, without its NaN case: the
/// caller computes a row holding one again. As many values as both hold.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub fn encode_bf16_largest_magnitude(values: &[f32], out: &mut [u8]) -> u32 {
    out.chunks_exact_mut(2)
        .zip(values)
        .fold(0, |largest, (o, &v)| {
            o.copy_from_slice(&round_to_bf16_bits(v).to_le_bytes());
            largest.max(v.to_bits() & 0x7fff_ffff)
        })
}

/// The magnitude, as f32 bits, from which an f32 value rounds to an infinite bf16: halfway
/// between the largest bf16 and 2^128 (a tie, which rounds to the even infinity).
pub const BF16_OVERFLOW_BITS: u32 = 0x7f7f_8000;

/// [`encode_into`] from f32.
#[multiversion::multiversion(targets("x86_64+avx2"))]
pub(super) fn encode_f32_into(dtype: Dtype, values: &[f32], out: &mut [u8]) -> Option<()> {
    match dtype {
        Dtype::F32 => out
            .chunks_exact_mut(4)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&v.to_le_bytes())),
        Dtype::F64 => out
            .chunks_exact_mut(8)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&f64::from(v).to_le_bytes())),
        Dtype::F16 => out
            .chunks_exact_mut(2)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&f16::from_f32(v).to_le_bytes())),
        Dtype::BF16 => out
            .chunks_exact_mut(2)
            .zip(values)
            .for_each(|(o, &v)| o.copy_from_slice(&f32_to_bf16_bits(v).to_le_bytes())),
        _ => return None,
    }
    Some(())
}

/// `bf16::from_f32(v).to_bits()`, bit for bit, without branches, so that the loop calling it
/// vectorises: the upper half of the bits rounded to nearest, ties to even, and a NaN's upper
/// half made quiet (rounding could carry its payload into an infinity).
#[inline]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let quiet_nan = ((v.to_bits() >> 16) | 0x40) as u16;
    if v.is_nan() {
        quiet_nan
    } else {
        round_to_bf16_bits(v)
    }
}
