//! The rules-driven loader against logits computed by HuggingFace transformers.

use ndarray::Ix2;

use super::*;
use crate::convert::open_model;
use crate::test_support::hf_reference_dir;

type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const TOLERANCE: f64 = 1e-4;

fn check(name: &str) -> TestResult<f64> {
    let dir = hf_reference_dir(name)?;
    let (checkpoint, anatomy) = open_model(&dir, &crate::anatomy::ArchChoice::Detect)?;
    let reference = Checkpoint::open(dir.join("reference.safetensors"))?;
    let ids_info = reference.info("input_ids").ok_or("no input_ids")?;
    let ids: Vec<i64> = reference
        .bytes("input_ids")
        .ok_or("no input_ids")?
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    let ids = Array2::from_shape_vec((ids_info.shape[0], ids_info.shape[1]), ids)?;
    let logits = run_tokens(&checkpoint, &anatomy, &ids.into_dimensionality::<Ix2>()?)?;
    let want: Vec<f32> = reference
        .values("logits")?
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let want = ArrayD::from_shape_vec(
        IxDyn(&reference.info("logits").ok_or("no logits")?.shape),
        want,
    )?;
    let d = compare(&want, &logits)?;
    println!("{name}: max |logits - HF| = {:.3e}", d.max_abs);
    assert!(
        d.max_abs <= TOLERANCE,
        "{name}: {:e} > {TOLERANCE:e}",
        d.max_abs
    );
    Ok(d.max_abs)
}

#[test]
fn bert_rules_loader_matches_hf() -> TestResult {
    check("bert").map(drop)
}

#[test]
fn gpt2_rules_loader_matches_hf() -> TestResult {
    check("gpt2").map(drop)
}
