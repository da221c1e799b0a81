//! Decoding and encoding: every float dtype round trips, bf16 agrees with `half` bit for bit
//! (from f64, from f32, and fused with the largest magnitude), and decoding two rows fused
//! with their mean is decoding then averaging, bit for bit.

use half::bf16;
use safetensors::Dtype;

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
