//! A de-coalesce's rows moved as bytes ([`Rearrange`]) are the rows of the general path
//! (decoding, f64 gathers, encoding) bit for bit: on every built-in architecture, in f32, bf16
//! and f16, with NaN, infinities, zeros, subnormals and values whose halves are subnormal in
//! the inputs, for splits into 2 and 4 (powers of two) and into 3 (the general path only).

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

/// De-coalesces `spec` by `factor` and compares the two paths on every float output tensor;
/// returns how many took the byte path.
fn both_paths_agree(spec: &FixtureSpec, factor: usize) -> usize {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("small");
    fixture::write_dir(spec, &dir).expect("fixture");
    poke_specials(&dir, spec.dtype);
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
    let job = Job::decoalesce(&dir, &options).expect("plan");
    let plan = job.plan();
    let checkpoint = Checkpoint::open(&dir).expect("open");
    let inputs = Inputs {
        primary: &checkpoint,
        large: None,
    };
    let mut rearranged = 0;
    for tensor in plan.tensors.iter().filter(|t| dtype::is_float(t.dtype)) {
        let what = format!("{} {:?} x{factor}: {}", spec.arch, spec.dtype, tensor.name);
        let first = tensor.sources.first().expect("a source");
        let mut rows = Rows::open(plan, tensor, first, inputs).expect(&what);
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
                let rearranged = both_paths_agree(&spec, factor);
                assert!(
                    rearranged > tensors,
                    "{} {dtype:?} x{factor}: only {rearranged} tensors took the byte path",
                    spec.arch
                );
            }
            // Groups of 3: splits leave the byte path (duplicates keep it).
            both_paths_agree(&spec, 3);
        }
    }
}
