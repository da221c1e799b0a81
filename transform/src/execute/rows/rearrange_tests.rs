//! A de-coalesce's rows moved as bytes ([`Rearrange`]), and a grow's rows decoded from them
//! and interpolated in one pass, are the rows of the general path (decoding, f64 gathers,
//! interpolation, encoding) bit for bit: on every built-in architecture, in f32, bf16 and f16,
//! with NaN, infinities, zeros, subnormals and values whose halves are subnormal in the
//! inputs, for splits into 2 and 4 (powers of two) and into 3 (the general path only).

use std::path::Path;

use safetensors::Dtype;

use super::*;
use crate::fixture::{self, FixtureSpec};
use crate::{Checkpoint, Job, Options, Target};

/// Overwrites elements of every float tensor of `dir/model.safetensors` with values the byte
/// path must leave to f64: at the start, the middle (a row that is otherwise fast) and the end.
fn poke_specials(dir: &Path, dtype: Dtype) {
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read fixture");
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let tiny = match dtype {
        Dtype::F16 => f64::from(half::f16::MIN_POSITIVE),
        _ => f64::from(f32::MIN_POSITIVE),
    };
    let specials = dtype::encode(
        dtype,
        &[
            f64::NAN,
            f64::NEG_INFINITY,
            -0.0,
            tiny / 4.0,
            tiny,
            -tiny * 3.0,
            0.0,
            f64::INFINITY,
        ],
    )
    .expect("float dtype");
    let size = element_size(dtype);
    for (_, info) in metadata.tensors() {
        if info.dtype != dtype {
            continue;
        }
        let (start, end) = info.data_offsets;
        let data = &mut bytes[8 + header_len + start..8 + header_len + end];
        let elements = data.len() / size;
        for at in [
            0,
            elements / 2,
            elements.saturating_sub(specials.len() / size),
        ] {
            let at = at * size;
            let n = specials.len().min(data.len() - at);
            data[at..at + n].copy_from_slice(&specials[..n]);
        }
    }
    std::fs::write(&path, bytes).expect("write fixture");
}

/// Overwrites every float value of `dir/model.safetensors` with a random one (then the
/// special values): a saved large model unlike the de-coalesced small one.
fn randomize(dir: &Path, dtype: Dtype, seed: u64) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).expect("read");
    let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let normal = rand_distr::Normal::new(0.0, 0.5).expect("normal");
    for (_, info) in metadata.tensors() {
        if info.dtype != dtype {
            continue;
        }
        let (start, end) = info.data_offsets;
        let data = &mut bytes[8 + header_len + start..8 + header_len + end];
        let values: Vec<f64> = (0..data.len() / element_size(dtype))
            .map(|_| normal.sample(&mut rng))
            .collect();
        data.copy_from_slice(&dtype::encode(dtype, &values).expect("float"));
    }
    std::fs::write(&path, bytes).expect("write");
    poke_specials(dir, dtype);
}

/// Compares the two paths on every float output tensor of `job`; returns how many took the
/// byte path.
fn both_paths_agree(job: &Job, small: &Path, large: Option<&Path>, what: &str) -> usize {
    let plan = job.plan();
    let small = Checkpoint::open(small).expect("open");
    let large = large.map(|l| Checkpoint::open(l).expect("open"));
    let inputs = Inputs {
        primary: &small,
        large: large.as_ref(),
    };
    let mut rearranged = 0;
    let gathers = Gathers::new(plan);
    for tensor in plan.tensors.iter().filter(|t| dtype::is_float(t.dtype)) {
        let what = format!("{what}: {}", tensor.name);
        let first = tensor.sources.first().expect("a source");
        let mut rows = Rows::open(plan, &gathers, tensor, first, inputs).expect(&what);
        if rows.rearrange.is_none() {
            continue;
        }
        rearranged += 1;
        let row_bytes = rows.out_row_len * element_size(tensor.dtype);
        let (mut general, mut moved) = (vec![0; row_bytes], vec![0; row_bytes]);
        let mut scratch = Scratch::default();
        for i in 0..rows.out_rows {
            rows.compute(i, &mut scratch, &mut moved).expect(&what);
            let rearrange = rows.rearrange.take();
            rows.compute(i, &mut scratch, &mut general).expect(&what);
            rows.rearrange = rearrange;
            assert!(general == moved, "{what}, row {i}");
        }
    }
    rearranged
}

/// De-coalesces `spec` by `factor`, then grows it back to a randomized copy of the result,
/// comparing the two paths; returns how many tensors took the byte path in each.
fn decoalesce_and_grow(spec: &FixtureSpec, factor: usize) -> [usize; 2] {
    let tmp = tempfile::tempdir().expect("tmp");
    let small = tmp.path().join("small");
    fixture::write_dir(spec, &small).expect("fixture");
    poke_specials(&small, spec.dtype);
    let dims = &spec.dims;
    let options = Options {
        target: Target {
            heads: Some(dims.heads * factor),
            kv_heads: Some(dims.kv_heads * factor),
            layers: Some(dims.layers * 2),
            ..Target::default()
        },
        ..Options::default()
    };
    let what = format!("{} {:?} x{factor}", spec.arch, spec.dtype);
    let job = Job::decoalesce(&small, &options).expect("plan");
    let decoalesced = both_paths_agree(&job, &small, None, &what);
    let large = tmp.path().join("large");
    job.write(&large, false).expect("decoalesce");
    randomize(&large, spec.dtype, spec.seed + 1);
    let grow = Job::grow(&small, &large, 0.3, &options).expect("plan");
    let grown = both_paths_agree(&grow, &small, Some(&large), &format!("{what} grow"));
    [decoalesced, grown]
}

#[test]
fn rows_moved_as_bytes_are_the_general_paths_bit_for_bit() {
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        for spec in [
            fixture::bert_mlm(1),
            fixture::gpt2_lm(2),
            fixture::llama_lm(3, false),
            fixture::vit_classifier(4),
        ] {
            let spec = FixtureSpec { dtype, ..spec };
            let tensors = spec.dims.layers * 4;
            for factor in [2, 4] {
                let counts = decoalesce_and_grow(&spec, factor);
                assert!(
                    counts.iter().all(|&n| n > tensors),
                    "{} {dtype:?} x{factor}: only {counts:?} tensors took the byte path",
                    spec.arch
                );
            }
            // Groups of 3: splits leave the byte path (duplicates keep it).
            decoalesce_and_grow(&spec, 3);
        }
    }
}
