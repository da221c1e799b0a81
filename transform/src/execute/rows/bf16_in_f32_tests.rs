//! bf16 tensors computed in f32 against the same tensors computed in f64: on every built-in
//! architecture, for a coalesce (depth means, means and sums of heads) and a de-coalesce into
//! groups of 3 (splits by 3, duplicates), the two give the same bits but for rare values one
//! bf16 step apart. Rows holding NaN or infinities, and rows whose f32 intermediates overflow
//! (means of values near the largest bf16 of opposite signs), are the f64 path's bit for bit.
//! A grow interpolates, and stays in f64.

use std::path::Path;

use safetensors::Dtype;

use super::*;
use crate::fixture::{self, FixtureSpec};
use crate::{Checkpoint, Job, Options, Target};

/// Near the largest bf16 (3.39e38): the difference of two of opposite signs overflows f32.
const HUGE: f64 = 3.0e38;

/// Overwrites every bf16 value of `dir/model.safetensors` with a random normal one, then
/// pokes NaN and infinities into some rows, and ±[`HUGE`] at the start of every tensor of a
/// layer: + in the first half of the layers, − in the second, which a halving of the depth
/// averages together.
fn randomize(dir: &Path, layers: usize, seed: u64) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read");
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0, 0.5).expect("normal");
    // In name order: `tensors()` is a hash map, whose order (and so which values each tensor
    // draws) would change from run to run.
    let mut tensors: Vec<_> = metadata.tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, info) in tensors {
        if info.dtype != Dtype::BF16 {
            continue;
        }
        let (start, end) = info.data_offsets;
        let data = &mut bytes[8 + header_len + start..8 + header_len + end];
        let mut values: Vec<f64> = (0..data.len() / 2)
            .map(|_| normal.sample(&mut rng))
            .collect();
        let n = values.len();
        for (at, special) in [(n / 2, f64::NAN), (n - 1, f64::INFINITY)] {
            values[at] = special;
        }
        let layer = name.split('.').find_map(|part| part.parse::<usize>().ok());
        if let Some(layer) = layer {
            values[0] = if layer < layers / 2 { HUGE } else { -HUGE };
        }
        data.copy_from_slice(&dtype::encode(Dtype::BF16, &values).expect("float"));
    }
    std::fs::write(&path, bytes).expect("write");
}

/// What comparing the two paths found over every output row of a plan.
#[derive(Default, Debug)]
struct Compared {
    /// Rows kept in f32 (all values finite there).
    f32_rows: usize,
    /// Rows computed again in f64.
    f64_rows: usize,
    values: usize,
    /// Values one bf16 step from the f64 path's.
    one_step: usize,
}

/// Computes every bf16 output row of `job` in f32 (falling back to f64 as the executor does)
/// and in f64 only, and compares them.
fn compare(job: &Job, input: &Path, what: &str) -> Compared {
    let plan = job.plan();
    let input = Checkpoint::open(input).expect("open");
    let inputs = Inputs {
        primary: &input,
        large: None,
    };
    let mut found = Compared::default();
    let gathers = Gathers::new(plan);
    for tensor in plan.tensors.iter().filter(|t| t.dtype == Dtype::BF16) {
        let what = format!("{what}: {}", tensor.name);
        let first = tensor.sources.first().expect("a source");
        let mut rows = Rows::open(plan, &gathers, tensor, first, inputs).expect(&what);
        assert!(rows.in_f32, "{what} is computed in f64");
        // The general path: a de-coalesce by powers of two would move bytes.
        rows.rearrange = None;
        let row_bytes = rows.out_row_len * 2;
        let (mut in_f32, mut in_f64) = (vec![0; row_bytes], vec![0; row_bytes]);
        let mut scratch = Scratch::default();
        for i in 0..rows.out_rows {
            let check = rows
                .compute_in::<f32>(i, &mut scratch, &mut in_f32)
                .expect(&what);
            let known_finite = rows.compute(i, &mut scratch, &mut in_f32).expect(&what);
            rows.compute_in::<f64>(i, &mut scratch, &mut in_f64)
                .expect(&what);
            assert_eq!(known_finite, check == Check::Finite, "{what}, row {i}");
            if known_finite {
                assert_eq!(
                    dtype::non_finite(Dtype::BF16, &in_f32),
                    None,
                    "{what}, row {i}"
                );
            }
            if check == Check::NotFinite {
                found.f64_rows += 1;
                assert!(in_f32 == in_f64, "{what}, row {i} computed again in f64");
            } else {
                found.f32_rows += 1;
            }
            for (a, b) in in_f32.chunks_exact(2).zip(in_f64.chunks_exact(2)) {
                let (a, b) = (
                    u16::from_le_bytes([a[0], a[1]]),
                    u16::from_le_bytes([b[0], b[1]]),
                );
                found.values += 1;
                let value = |bits| f64::from(half::bf16::from_bits(bits));
                if a != b {
                    assert!(
                        a.abs_diff(b) == 1 && value(a).signum() == value(b).signum(),
                        "{what}, row {i}: {a:#06x} in f32, {b:#06x} in f64"
                    );
                    found.one_step += 1;
                }
            }
        }
    }
    found
}

#[test]
fn bf16_computed_in_f32_is_the_f64_result_but_for_rare_single_steps() {
    let mut total = Compared::default();
    for spec in [
        fixture::bert_mlm(5),
        fixture::gpt2_lm(6),
        fixture::llama_lm(7, false),
        fixture::vit_classifier(8),
    ] {
        let spec = FixtureSpec {
            dtype: Dtype::BF16,
            ..spec
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let large = tmp.path().join("large");
        fixture::write_dir(&spec, &large).expect("fixture");
        randomize(&large, spec.dims.layers, spec.seed);
        let dims = &spec.dims;
        let options = Options {
            target: Target {
                heads: Some(dims.heads / 2),
                kv_heads: Some(dims.kv_heads / 2),
                layers: Some(dims.layers / 2),
                ..Target::default()
            },
            ..Options::default()
        };
        let what = format!("{} coalesce", spec.arch);
        let coalesce = Job::coalesce(&large, &options).expect(&what);
        let coalesced = compare(&coalesce, &large, &what);
        let what = format!("{} de-coalesce", spec.arch);
        let options = Options {
            target: Target {
                heads: Some(dims.heads * 3),
                kv_heads: Some(dims.kv_heads * 3),
                ..Target::default()
            },
            ..Options::default()
        };
        let decoalesce = Job::decoalesce(&large, &options).expect(&what);
        let decoalesced = compare(&decoalesce, &large, &what);
        for part in [coalesced, decoalesced] {
            total.f32_rows += part.f32_rows;
            total.f64_rows += part.f64_rows;
            total.values += part.values;
            total.one_step += part.one_step;
        }
    }
    // Both paths were taken, and differences are rare.
    assert!(
        total.f32_rows > 10 * total.f64_rows && total.f64_rows > 0,
        "{total:?}"
    );
    eprintln!("{total:?}");
    assert!(total.one_step * 10_000 < total.values, "{total:?}");
}

#[test]
fn an_f32_row_is_known_finite_only_below_the_bf16_overflow() {
    let below = f32::from_bits(dtype::BF16_OVERFLOW_BITS - 1);
    let at = f32::from_bits(dtype::BF16_OVERFLOW_BITS);
    let encoded = |v: f32| dtype::encode(Dtype::BF16, &[f64::from(v)]).expect("bf16");
    assert_eq!(dtype::non_finite(Dtype::BF16, &encoded(below)), None);
    assert!(dtype::non_finite(Dtype::BF16, &encoded(-at)).is_some());
    for (row, check) in [
        (vec![], Check::Finite),
        (vec![1.0, -2.0, 0.0, -below], Check::Finite),
        (vec![1.0, at], Check::Unknown),
        (vec![f32::MAX], Check::Unknown),
        (vec![1.0, f32::NEG_INFINITY], Check::NotFinite),
        (vec![f32::NAN, 1.0], Check::NotFinite),
        (vec![-f32::NAN], Check::NotFinite),
    ] {
        let mut out = vec![0u8; 2 * row.len()];
        let found = <f32 as Computed>::encode(Dtype::BF16, &row, &mut out);
        assert_eq!(found, Some(check), "{row:?}");
        if check != Check::NotFinite {
            let mut expected = vec![0u8; 2 * row.len()];
            dtype::encode_into(Dtype::BF16, &row, &mut expected).expect("bf16");
            assert_eq!(out, expected, "{row:?}");
        }
    }
}
