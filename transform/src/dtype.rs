//! Float storage types: decoding to and encoding from the float the operators compute in.
//!
//! Arithmetic runs in f64, and in f32 for bf16 tensors computed from bf16 tensors without
//! interpolation (see [`Float`]): either way a mean of equal values is exact and the round trip
//! coalesce(de-coalesce(θ)) returns θ bit for bit for groups of two.

use std::ops::{Add, AddAssign, Div, Mul, Sub};

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;

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
    /// The value nearest `v` (exact for the group sizes, reciprocals of powers of two and α
    /// that the operators use as f64).
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
fn encode_f64_into(dtype: Dtype, values: &[f64], out: &mut [u8]) -> Option<()> {
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
fn encode_f32_into(dtype: Dtype, values: &[f32], out: &mut [u8]) -> Option<()> {
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

/// `out` = every value of little-endian `bytes` of a float `dtype` divided by 2^`k`, with the
/// bits that [`decode_into`], a product by 2^−k in f64 and [`encode_into`] give, without
/// decoding most of them: a normal value with a normal quotient only has its exponent lowered,
/// a zero keeps its bits, and with `k` = 0 every finite value keeps its bits. The rest
/// (subnormal quotients, infinities and NaNs) goes through f64. As many values as both hold.
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn divide_by_power_of_two(dtype: Dtype, bytes: &[u8], k: u32, out: &mut [u8]) -> Option<()> {
    // The exponent field: its shift and its mask.
    let (shift, field) = match dtype {
        Dtype::F16 => (10, 0x1f),
        Dtype::BF16 => (7, 0xff),
        Dtype::F32 => (23, 0xff),
        Dtype::F64 => (52, 0x7ff),
        _ => return None,
    };
    let through_f64 = |element: &[u8], out: &mut [u8]| {
        let mut value = [0.0];
        if decode_into(dtype, element, &mut value).is_some() {
            value[0] *= 0.5f64.powi(k as i32);
            let _ = encode_into(dtype, &value, out);
        }
    };
    match element_size(dtype) {
        2 => lower_exponents(
            ExponentShift::<u16>::new(k, shift, field),
            bytes,
            out,
            through_f64,
        ),
        4 => lower_exponents(
            ExponentShift::<u32>::new(k, shift, field),
            bytes,
            out,
            through_f64,
        ),
        _ => lower_exponents(
            ExponentShift::<u64>::new(k, shift, field),
            bytes,
            out,
            through_f64,
        ),
    }
    Some(())
}

/// The unsigned integer of a float's bits.
trait Bits:
    Copy
    + Eq
    + Ord
    + std::ops::BitAnd<Output = Self>
    + std::ops::Shr<u32, Output = Self>
    + std::ops::Sub<Output = Self>
{
    const SIZE: usize;
    const ZERO: Self;
    /// The integer `value`; the shifts and masks of the float formats fit every width.
    fn of(value: u64) -> Self;
    fn read(element: &[u8]) -> Self;
    fn write(self, element: &mut [u8]);
}

macro_rules! bits {
    ($($t:ty),*) => {$(
        impl Bits for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const ZERO: Self = 0;
            fn of(value: u64) -> Self {
                value as $t
            }
            #[inline]
            fn read(element: &[u8]) -> Self {
                let mut le = [0; std::mem::size_of::<$t>()];
                le.copy_from_slice(element);
                <$t>::from_le_bytes(le)
            }
            #[inline]
            fn write(self, element: &mut [u8]) {
                element.copy_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
bits!(u16, u32, u64);

/// Lowering the exponents of floats of `B`'s width by k, in the integers of that width (so
/// that the loops vectorise).
#[derive(Clone, Copy)]
struct ExponentShift<B> {
    shift: u32,
    field: B,
    /// Sign bit cleared.
    magnitude: B,
    /// The lowest exponent whose value divides exactly by lowering it: k + 1 (0 for k = 0).
    lowest: B,
    /// k at the exponent's place.
    delta: B,
}

impl<B: Bits> ExponentShift<B> {
    fn new(k: u32, shift: u32, field: u64) -> Self {
        let lowest = if k == 0 { 0 } else { u64::from(k) + 1 };
        ExponentShift {
            shift,
            field: B::of(field),
            magnitude: B::of((field << shift) | ((1 << shift) - 1)),
            lowest: B::of(lowest),
            delta: B::of(u64::from(k) << shift),
        }
    }

    /// Whether lowering the exponent of `bits` divides its value exactly: a finite value, and
    /// a zero, a normal quotient, or k = 0.
    #[inline]
    fn exact(self, bits: B) -> bool {
        let exponent = (bits >> self.shift) & self.field;
        exponent != self.field && (exponent >= self.lowest || bits & self.magnitude == B::ZERO)
    }

    /// `bits` divided by 2^k, where [`ExponentShift::exact`].
    #[inline]
    fn lowered(self, bits: B) -> B {
        if bits & self.magnitude == B::ZERO {
            bits
        } else {
            bits - self.delta
        }
    }
}

/// [`divide_by_power_of_two`] on floats of `B`'s width, a run at a time: a run whose values
/// all divide exactly takes a loop without branches; one that holds another goes value by
/// value.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn lower_exponents<B: Bits>(
    shift: ExponentShift<B>,
    bytes: &[u8],
    out: &mut [u8],
    through_f64: impl Fn(&[u8], &mut [u8]),
) {
    const RUN: usize = 64;
    for (run, out) in bytes
        .chunks(RUN * B::SIZE)
        .zip(out.chunks_mut(RUN * B::SIZE))
    {
        let all_exact = run
            .chunks_exact(B::SIZE)
            .fold(true, |all, e| all & shift.exact(B::read(e)));
        let pairs = run.chunks_exact(B::SIZE).zip(out.chunks_exact_mut(B::SIZE));
        if all_exact {
            pairs.for_each(|(e, o)| shift.lowered(B::read(e)).write(o));
            continue;
        }
        for (e, o) in pairs {
            let bits = B::read(e);
            if shift.exact(bits) {
                shift.lowered(bits).write(o);
            } else {
                through_f64(e, o);
            }
        }
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

/// The dtype name as safetensors headers write it (`F32`, `BF16`, ...).
pub fn name(dtype: Dtype) -> String {
    format!("{dtype:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_dtype_round_trips_through_f64() {
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let size = element_size(dtype);
            let bytes: Vec<u8> = (0..size * 64).map(|i| (i * 37 % 251) as u8).collect();
            let values = decode(dtype, &bytes).unwrap_or_default();
            let back = encode(dtype, &values).unwrap_or_default();
            // NaN payloads may be canonicalised by half; compare values where defined.
            let again = decode(dtype, &back).unwrap_or_default();
            for (a, b) in values.iter().zip(&again) {
                assert!(
                    a.is_nan() && b.is_nan() || a.to_bits() == b.to_bits(),
                    "{dtype:?}"
                );
            }
        }
    }

    /// `decode_pair_into` with the pair mean against decoding both rows and averaging them, in
    /// `T`, on random bytes of `dtype`; the number of values whose bits differ (NaNs aside).
    fn fused_pair_mean_differences<T: Float + Into<f64>>(dtype: Dtype, seed: u64) -> usize {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let n = 100_003;
        let mut random = || -> Vec<u8> {
            (0..element_size(dtype) * n)
                .map(|_| rng.random::<u8>())
                .collect()
        };
        let (a, b) = (random(), random());
        let mut fused = vec![T::ZERO; n];
        decode_pair_into(dtype, &a, &b, &mut fused, crate::ops::pair_mean)
            .unwrap_or_else(|| panic!("{dtype:?} is a float dtype"));
        let mut layers = [vec![T::ZERO; n], vec![T::ZERO; n]];
        for (layer, bytes) in layers.iter_mut().zip([&a, &b]) {
            decode_into(dtype, bytes, layer).unwrap_or_else(|| panic!("{dtype:?}"));
        }
        let mut separate = vec![T::ZERO; n];
        crate::ops::mean_into(&mut separate, &layers);
        fused
            .iter()
            .zip(&separate)
            .map(|(&x, &y)| (x.into(), y.into()))
            .filter(|(x, y): &(f64, f64)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
            .count()
    }

    #[test]
    fn fused_pair_mean_is_decoding_then_mean_bit_for_bit() {
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            assert_eq!(
                fused_pair_mean_differences::<f64>(dtype, 11),
                0,
                "{dtype:?}"
            );
        }
        assert_eq!(fused_pair_mean_differences::<f32>(Dtype::BF16, 12), 0);
    }

    #[test]
    fn bf16_decoding_is_halfs_bit_for_bit() {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let ours = decode(Dtype::BF16, &bytes).unwrap_or_default();
        assert_eq!(ours.len(), 1 << 16);
        for (bits, value) in (0..=u16::MAX).zip(ours) {
            assert_eq!(
                value.to_bits(),
                bf16::from_bits(bits).to_f64().to_bits(),
                "{bits:#06x}"
            );
        }
    }

    /// f32 values for bf16 encoding: every upper half with the lower halves around a tie, and
    /// a million random bit patterns.
    fn f32_patterns(seed: u64) -> Vec<f32> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
        let lower = [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff];
        let mut bits: Vec<u32> = (0..=u32::from(u16::MAX))
            .flat_map(|upper| lower.map(|low| upper << 16 | low))
            .collect();
        bits.extend((0..1_000_000).map(|_| rng.random::<u32>()));
        bits.into_iter().map(f32::from_bits).collect()
    }

    #[test]
    fn bf16_encoding_from_f32_is_halfs_bit_for_bit() {
        let values = f32_patterns(9);
        let mut ours = vec![0u8; values.len() * 2];
        encode_into(Dtype::BF16, &values, &mut ours).unwrap();
        for (v, ours) in values.iter().zip(ours.chunks_exact(2)) {
            assert_eq!(
                u16::from_le_bytes([ours[0], ours[1]]),
                bf16::from_f32(*v).to_bits(),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        }
    }

    #[test]
    fn bf16_encoding_fused_with_the_largest_magnitude_is_encodings_without_nan() {
        let mut values = f32_patterns(11);
        values.retain(|v| !v.is_nan());
        let mut expected = vec![0u8; values.len() * 2];
        encode_into(Dtype::BF16, &values, &mut expected).unwrap();
        let largest_magnitude_bits = |v: &[f32]| {
            v.iter()
                .map(|v| v.to_bits() & 0x7fff_ffff)
                .fold(0, u32::max)
        };
        // In rows of a few lengths, so that each row's largest magnitude is checked.
        for row in [1, 7, 64, 1000] {
            let mut ours = vec![0u8; values.len() * 2];
            for (v, o) in values.chunks(row).zip(ours.chunks_mut(2 * row)) {
                assert_eq!(
                    encode_bf16_largest_magnitude(v, o),
                    largest_magnitude_bits(v),
                    "{v:?}"
                );
            }
            assert!(ours == expected, "rows of {row}");
        }
        assert_eq!(encode_bf16_largest_magnitude(&[], &mut []), 0);
        let mut out = [0u8; 4];
        let nan = encode_bf16_largest_magnitude(&[1.0, -f32::NAN], &mut out);
        assert!(nan > f32::INFINITY.to_bits());
    }

    #[test]
    fn bf16_encoding_is_halfs_bit_for_bit() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        let edges = [
            0.0,
            -0.0,
            1.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NAN,
            f64::from(f32::MAX),
            f64::from(f32::MIN_POSITIVE),
            3.3895313892515355e38,
            1.1754943508222875e-38,
            9.183549615799121e-41,
        ];
        let mut values = edges.to_vec();
        values.extend((0..1_000_000).map(|_| f64::from_bits(rng.random::<u64>())));
        // Values near bf16's range and rounding boundaries, where the cases differ.
        values.extend((0..1_000_000u64).map(|i| {
            let exponent = 880 + (i % 290);
            let mantissa = rng.random::<u64>() & 0x000f_ffff_ffff_ffff;
            // Every third one a tie or near-tie in the upper word, with nothing below it.
            let mantissa = if i % 3 == 0 {
                mantissa & !0x000f_ffff_ffff
            } else {
                mantissa
            };
            f64::from_bits((i % 2) << 63 | exponent << 52 | mantissa)
        }));
        for v in values {
            let mut ours = [0u8; 2];
            encode_into(Dtype::BF16, &[v], &mut ours).unwrap();
            assert_eq!(
                u16::from_le_bytes(ours),
                bf16::from_f64(v).to_bits(),
                "{v:e} ({:#x})",
                v.to_bits()
            );
        }
    }

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

    /// What the operators compute for a value divided by 2^k: decoded, multiplied, encoded.
    fn divided_through_f64(dtype: Dtype, element: &[u8], k: u32) -> Vec<u8> {
        let values: Vec<f64> = decode(dtype, element)
            .unwrap_or_default()
            .iter()
            .map(|v| v * 0.5f64.powi(k as i32))
            .collect();
        encode(dtype, &values).unwrap_or_default()
    }

    #[test]
    fn dividing_by_a_power_of_two_in_place_is_the_f64_path_bit_for_bit() {
        use rand::{RngExt, SeedableRng};
        let ks = [0, 1, 2, 3, 7, 30];
        // Every f16 and bf16 bit pattern, in an order that mixes runs of exact and inexact.
        let halves: Vec<u8> = (0..=u16::MAX)
            .map(|i| i.wrapping_mul(40503))
            .flat_map(u16::to_le_bytes)
            .collect();
        // f32 and f64: random patterns, and around every exponent a quotient can reach.
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(5);
        let mut wide = |size: usize, shift: u32, field: u64| -> Vec<u8> {
            let mut bits: Vec<u64> = (0..200_000).map(|_| rng.random::<u64>()).collect();
            for exponent in (0..40).chain(field - 2..=field) {
                for mantissa in [0, 1, (1 << shift) - 1] {
                    for sign in [0, 1u64 << (size * 8 - 1)] {
                        bits.push(sign | (exponent << shift) | mantissa);
                    }
                }
            }
            bits.iter()
                .flat_map(|b| b.to_le_bytes()[..size].to_vec())
                .collect()
        };
        let cases = [
            (Dtype::F16, halves.clone()),
            (Dtype::BF16, halves),
            (Dtype::F32, wide(4, 23, 0xff)),
            (Dtype::F64, wide(8, 52, 0x7ff)),
        ];
        for (dtype, bytes) in cases {
            let size = element_size(dtype);
            for k in ks {
                let mut divided = vec![0; bytes.len()];
                divide_by_power_of_two(dtype, &bytes, k, &mut divided).unwrap_or_default();
                for (i, (got, element)) in divided
                    .chunks_exact(size)
                    .zip(bytes.chunks_exact(size))
                    .enumerate()
                {
                    let want = divided_through_f64(dtype, element, k);
                    assert_eq!(
                        got,
                        want.as_slice(),
                        "{dtype:?} / 2^{k}, element {i}: {element:?}"
                    );
                }
            }
        }
        assert!(divide_by_power_of_two(Dtype::I32, &[0; 4], 1, &mut [0; 4]).is_none());
    }
}
