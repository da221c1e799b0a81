//! docs/operator-contract.md §3 property 1 over random sizes, schemes and dtypes: coalesce(de-coalesce(θ)) = θ,
//! bit for bit for groups of two (and one), within one unit in the last place otherwise.
//!
//! One honest exception: a value split by |g| can fall below f16's normal range (2⁻¹⁴), where
//! f16 keeps an absolute spacing of 2⁻²⁴; such values come back within |g|·2⁻²⁴.

use std::collections::BTreeMap;

use proptest::prelude::*;
use safetensors::Dtype;

use super::*;
use crate::anatomy::{Dims, EmbeddingRule};
use crate::fixture::{self, FixtureSpec};
use crate::scheme::SchemeSpec;

/// Explicit groups: `small` groups of `k` units, from a shuffled `0..small·k`.
fn groups(small: usize, k: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    Just((0..small * k).collect::<Vec<_>>())
        .prop_shuffle()
        .prop_map(move |units| units.chunks(k).map(<[usize]>::to_vec).collect())
}

#[derive(Debug, Clone)]
struct Case {
    arch: &'static str,
    heads: usize,
    layers: usize,
    width: Vec<Vec<usize>>,
    depth: Vec<Vec<usize>>,
    dtype: Dtype,
    rule: EmbeddingRule,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just("bert"), Just("gpt2")],
        1usize..4,
        1usize..4,
        1usize..5,
        1usize..4,
        prop_oneof![
            Just(Dtype::F32),
            Just(Dtype::F16),
            Just(Dtype::BF16),
            Just(Dtype::F64)
        ],
        prop_oneof![Just(EmbeddingRule::Exact), Just(EmbeddingRule::Reference)],
    )
        .prop_flat_map(|(arch, heads, layers, kw, kd, dtype, rule)| {
            (groups(heads, kw), groups(layers, kd)).prop_map(move |(width, depth)| Case {
                arch,
                heads,
                layers,
                width,
                depth,
                dtype,
                rule,
            })
        })
}

/// Ordered integer form of a float's bits, so adjacent floats differ by one.
fn ordered(dtype: Dtype, bytes: &[u8]) -> Vec<i128> {
    let size = crate::dtype::element_size(dtype);
    bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            let bits = u64::from_le_bytes(b);
            let sign = 1u64 << (size * 8 - 1);
            let magnitude = i128::from(bits & (sign - 1));
            if bits & sign != 0 {
                -magnitude
            } else {
                magnitude
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn coalesce_inverts_decoalesce(case in case()) {
        let tmp = tempfile::tempdir().expect("tmp");
        let small_path = tmp.path().join("small");
        let spec = FixtureSpec {
            dims: Dims {
                layers: case.layers,
                hidden: 8 * case.heads,
                heads: case.heads,
                kv_heads: case.heads,
                head_dim: 4,
                ffn: 12 * case.heads,
                tied: true,
                fixed: BTreeMap::from([
                    ("vocab".into(), 11),
                    ("positions".into(), 5),
                    ("token_types".into(), 2),
                ]),
            },
            dtype: case.dtype,
            ..if case.arch == "bert" { fixture::bert_mlm(5) } else { fixture::gpt2_lm(5) }
        };
        fixture::write_dir(&spec, &small_path).expect("fixture");
        let target = |heads, layers| Options {
            target: Target {
                heads: Some(heads),
                layers: Some(layers),
                width_scheme: SchemeSpec::Explicit(case.width.clone()),
                depth_scheme: SchemeSpec::Explicit(case.depth.clone()),
                embedding_rule: case.rule,
                ..Target::default()
            },
            ..Options::default()
        };
        let large_heads: usize = case.width.iter().map(Vec::len).sum();
        let large_layers: usize = case.depth.iter().map(Vec::len).sum();
        let big = tmp.path().join("big");
        Job::decoalesce(&small_path, &target(large_heads, large_layers))
            .and_then(|j| j.write(&big, false))
            .expect("decoalesce");
        let back = tmp.path().join("back");
        Job::coalesce(&big, &target(case.heads, case.layers))
            .and_then(|j| j.write(&back, false))
            .expect("coalesce");

        let original = Checkpoint::open(&small_path).expect("open");
        let returned = Checkpoint::open(&back).expect("open");
        let k = case.width[0].len().max(case.depth[0].len());
        let exact = k <= 2;
        prop_assert_eq!(original.tensors().len(), returned.tensors().len());
        for (name, info) in original.tensors() {
            let got = returned.info(name).expect("tensor present");
            prop_assert_eq!(&got.shape, &info.shape);
            prop_assert_eq!(got.dtype, info.dtype);
            let (a, b) = (original.bytes(name).unwrap_or_default(), returned.bytes(name).unwrap_or_default());
            if !crate::dtype::is_float(info.dtype) {
                prop_assert!(a == b, "{} differs", name);
                continue;
            }
            let values = |bytes| crate::dtype::decode(info.dtype, bytes).unwrap_or_default();
            let ulps = ordered(info.dtype, a).into_iter().zip(ordered(info.dtype, b));
            for ((x, y), (vx, vy)) in ulps.zip(values(a).into_iter().zip(values(b))) {
                let f16_subnormal = info.dtype == Dtype::F16 && (vx - vy).abs() <= k as f64 * 2f64.powi(-24);
                let allowed = if exact { 0 } else { 1 };
                prop_assert!(
                    (x - y).abs() <= allowed || f16_subnormal,
                    "{} differs: {} vs {} (groups of {})", name, vx, vy, k
                );
            }
        }
    }
}
