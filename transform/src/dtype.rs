//! Float storage types: decoding to and encoding from the f64 the operators compute in.
//!
//! All arithmetic runs in f64, so a mean of equal f32, f16 or bf16 values is exact and the
//! round trip coalesce(de-coalesce(θ)) returns θ bit for bit for groups of two.

use half::{bf16, f16};
use safetensors::Dtype;

/// Whether the operators can compute on this dtype (other tensors pass through unchanged).
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Decodes little-endian `bytes` of a float `dtype` into f64 values.
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f64>> {
    let values = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        _ => return None,
    };
    Some(values)
}

/// Encodes f64 values into little-endian bytes of a float `dtype` (round to nearest even).
///
/// Returns `None` for a dtype that is not one of f16, bf16, f32, f64.
pub fn encode(dtype: Dtype, values: &[f64]) -> Option<Vec<u8>> {
    let bytes = match dtype {
        Dtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        Dtype::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f64(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f64(v).to_le_bytes())
            .collect(),
        _ => return None,
    };
    Some(bytes)
}

/// The size of one element in bytes, for any safetensors dtype whose elements are whole bytes.
pub fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
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

    #[test]
    fn integer_dtypes_are_not_float() {
        assert!(!is_float(Dtype::I64));
        assert!(decode(Dtype::I64, &[0; 8]).is_none());
    }
}
