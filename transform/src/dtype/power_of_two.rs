//! Dividing float bytes by a power of two in their own encoding, by lowering exponents.

use safetensors::Dtype;

use super::{decode_into, element_size, encode_into};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::{decode, encode};

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
