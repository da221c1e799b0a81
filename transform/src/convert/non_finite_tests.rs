//! A coalesce scans its outputs, not its inputs, for NaN and infinite values, and reads the
//! inputs of an output only when it holds one (see `Job::non_finite_inputs_reach_output`).
//! That is sound only if every input value reaches an output: checked here by poking a NaN
//! into each float input tensor of every built-in architecture in turn, in f32 and in bf16
//! (computed in f32, whose rows known to be finite are not scanned), and requiring the
//! conversion to name that tensor.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use safetensors::SafeTensors;

use super::*;
use crate::fixture::{self, FixtureSpec};

/// Overwrites element `index` of tensor `name` in `dir/model.safetensors` with `value` (the
/// bytes of one element of its dtype), and returns the bytes it held.
fn poke(dir: &Path, name: &str, index: usize, value: &[u8]) -> Vec<u8> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read fixture");
    let (header_len, metadata) = SafeTensors::read_metadata(&bytes).expect("header");
    let info = metadata.info(name).expect("tensor in fixture");
    let offset = 8 + header_len + info.data_offsets.0 + index * value.len();
    let old = bytes
        .get(offset..offset + value.len())
        .expect("element in file");
    let old = old.to_vec();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open fixture");
    file.seek(SeekFrom::Start(offset as u64)).expect("seek");
    file.write_all(value).expect("write");
    old
}

fn every_input_is_named_when_it_holds_a_nan(spec: &FixtureSpec, target: Target) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("in");
    fixture::write_dir(spec, &dir).expect("fixture");
    let tensors = Checkpoint::open(&dir).expect("open").tensors().clone();
    let options = Options {
        target,
        ..Options::default()
    };
    let nan = crate::dtype::encode(spec.dtype, &[f64::NAN]).expect("float dtype");
    let mut poked = 0;
    for (name, info) in &tensors {
        if info.dtype != spec.dtype {
            continue;
        }
        let numel = info.numel();
        for index in [0, numel / 2, numel.saturating_sub(1)] {
            let old = poke(&dir, name, index, &nan);
            let job = Job::coalesce(&dir, &options).expect("plan");
            assert!(
                job.plan().operator == plan::Operator::Coalesce,
                "the output-first scan is what is under test"
            );
            job.write(&tmp.path().join("out"), true)
                .unwrap_or_else(|e| panic!("{}/{name}[{index}]: {e}", spec.arch));
            let warnings = job.write_warnings();
            assert!(
                warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{name}`")) && w.contains("1 NaN")),
                "{}: a NaN at element {index} of `{name}` went unreported: {warnings:?}",
                spec.arch
            );
            poke(&dir, name, index, &old);
            poked += 1;
        }
    }
    assert!(poked > 30, "{}: only {poked} tensors poked", spec.arch);
}

#[test]
fn a_nan_in_any_input_of_a_coalesce_is_named() {
    let halve = |kv_heads| Target {
        heads: Some(2),
        kv_heads,
        layers: Some(2),
        ..Target::default()
    };
    for dtype in [safetensors::Dtype::F32, safetensors::Dtype::BF16] {
        for (spec, target) in [
            (fixture::bert_mlm(1), halve(None)),
            (fixture::gpt2_lm(2), halve(None)),
            (fixture::llama_lm(3, false), halve(Some(1))),
            (fixture::vit_classifier(4), halve(None)),
        ] {
            every_input_is_named_when_it_holds_a_nan(&FixtureSpec { dtype, ..spec }, target);
        }
    }
}
