//! The rules-driven loader against logits computed by HuggingFace transformers, for every
//! reference folder, plus the same weights under other names (timm) and config styles.

use std::path::Path;

use ndarray::{Ix2, Ix4, IxDyn};
use serde_json::{Value, json};

use super::test_checkpoints::{DeitParts, TestResult, hf_vit_to_deit, hf_vit_to_timm, load, save};
use super::*;
use crate::anatomy::ArchChoice;
use crate::convert::open_model;
use crate::test_support::hf_reference_dir;

const TOLERANCE: f64 = 1e-4;

/// The reference input and logits of a folder of `fixtures/hf-reference`.
fn reference(name: &str) -> TestResult<(ModelInput, ArrayD<f32>)> {
    reference_in(&hf_reference_dir(name)?)
}

/// The input and logits in `dir`/reference.safetensors.
fn reference_in(dir: &Path) -> TestResult<(ModelInput, ArrayD<f32>)> {
    let reference = Checkpoint::open(dir.join("reference.safetensors"))?;
    let input = if let Some(info) = reference.info("input_ids") {
        let ids: Vec<i64> = reference
            .bytes("input_ids")
            .ok_or("no input_ids")?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        ModelInput::Tokens(
            ArrayD::from_shape_vec(IxDyn(&info.shape), ids)?.into_dimensionality::<Ix2>()?,
        )
    } else {
        let info = reference.info("pixel_values").ok_or("no pixel_values")?;
        let pixels: Vec<f32> = reference
            .values("pixel_values")?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        ModelInput::Pixels(
            ArrayD::from_shape_vec(IxDyn(&info.shape), pixels)?.into_dimensionality::<Ix4>()?,
        )
    };
    let want: Vec<f32> = reference
        .values("logits")?
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let want = ArrayD::from_shape_vec(
        IxDyn(&reference.info("logits").ok_or("no logits")?.shape),
        want,
    )?;
    Ok((input, want))
}

/// Runs the model at `dir` (architecture detected) on reference `name`'s input and returns the
/// max abs difference from HF's logits.
fn check_dir(name: &str, dir: &Path) -> TestResult<f64> {
    check_against(name, &hf_reference_dir(name)?, dir)
}

/// [`check_dir`] with the reference in `reference_dir`.
fn check_against(name: &str, reference_dir: &Path, dir: &Path) -> TestResult<f64> {
    let (checkpoint, anatomy) = open_model(dir, &ArchChoice::Detect)?;
    let (input, want) = reference_in(reference_dir)?;
    let logits = run(&checkpoint, &anatomy, input.view())?;
    let d = compare(&want, &logits)?;
    println!(
        "{name} ({} via `{}` rules): max |logits - HF| = {:.3e}",
        dir.display(),
        anatomy.rules.name,
        d.max_abs
    );
    assert!(
        d.max_abs <= TOLERANCE,
        "{name}: {:e} > {TOLERANCE:e}",
        d.max_abs
    );
    Ok(d.max_abs)
}

fn check(name: &str) -> TestResult<f64> {
    check_dir(name, &hf_reference_dir(name)?)
}

#[test]
fn bert_rules_loader_matches_hf() -> TestResult {
    check("bert").map(drop)
}

#[test]
fn gpt2_rules_loader_matches_hf() -> TestResult {
    check("gpt2").map(drop)
}

#[test]
fn llama_rules_loader_matches_hf() -> TestResult {
    check("llama").map(drop)
}

#[test]
fn llama_tied_rules_loader_matches_hf() -> TestResult {
    check("llama-tied").map(drop)
}

#[test]
fn vit_rules_loader_matches_hf() -> TestResult {
    check("vit").map(drop)
}

/// A DeiT with a distillation token and two heads, written with its logits by transformers
/// (`fixtures/hf-deit`, from scripts/hf_make_deit.py): the logits are the mean of both heads.
#[test]
fn deit_with_teacher_matches_hf() -> TestResult {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hf-deit");
    let (_, anatomy) = open_model(&dir, &ArchChoice::Detect)?;
    assert_eq!(anatomy.rules.name, "vit");
    check_against("hf-deit", &dir, &dir).map(drop)
}

/// The HF ViT weights under timm's names (fused qkv, no config.json sizes but `num_heads`) give
/// HF's logits through the `vit-timm` rules.
#[test]
fn vit_timm_names_match_hf() -> TestResult {
    let (tensors, config) = load(&hf_reference_dir("vit")?)?;
    let layers = config
        .as_ref()
        .and_then(|c| c["num_hidden_layers"].as_u64())
        .ok_or("num_hidden_layers")? as usize;
    let heads = config
        .as_ref()
        .and_then(|c| c["num_attention_heads"].as_u64())
        .ok_or("num_attention_heads")?;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("timm");
    save(
        &dir,
        &hf_vit_to_timm(&tensors, layers)?,
        Some(&json!({"architecture": "vit_tiny_test", "num_heads": heads, "num_classes": 10})),
    )?;
    let (_, anatomy) = open_model(&dir, &ArchChoice::Detect)?;
    assert_eq!(anatomy.rules.name, "vit-timm");
    check_dir("vit", &dir).map(drop)
}

/// Older configs keep the rotary base at the top level, newer ones under `rope_parameters`:
/// both give HF's logits, and a different base read either way changes them the same way.
#[test]
fn both_rope_theta_styles_give_the_same_logits() -> TestResult {
    let (tensors, config) = load(&hf_reference_dir("llama")?)?;
    let mut config = config.ok_or("config.json")?;
    let object = config.as_object_mut().ok_or("config object")?;
    let nested = object.remove("rope_parameters").ok_or("rope_parameters")?;
    let theta = nested["rope_theta"].clone();
    let work = tempfile::tempdir()?;
    let (input, _) = reference("llama")?;
    let logits_for =
        |name: &str, rope: serde_json::Map<String, Value>| -> TestResult<ArrayD<f32>> {
            let mut c = object.clone();
            c.extend(rope);
            let dir = work.path().join(name);
            save(&dir, &tensors, Some(&Value::Object(c)))?;
            let (checkpoint, anatomy) = open_model(&dir, &ArchChoice::Detect)?;
            Ok(run(&checkpoint, &anatomy, input.view())?)
        };
    let entry = |k: &str, v: Value| serde_json::Map::from_iter([(k.to_string(), v)]);
    let top = logits_for("top", entry("rope_theta", theta.clone()))?;
    let nested_logits = logits_for(
        "nested",
        entry(
            "rope_parameters",
            json!({"rope_theta": theta, "rope_type": "default"}),
        ),
    )?;
    assert_eq!(top, nested_logits);
    check_dir("llama", &work.path().join("top"))?;

    let top_500k = logits_for("top-500k", entry("rope_theta", json!(500000.0)))?;
    let nested_500k = logits_for(
        "nested-500k",
        entry(
            "rope_parameters",
            json!({"rope_theta": 500000.0, "rope_type": "default"}),
        ),
    )?;
    assert_eq!(top_500k, nested_500k);
    let d = compare(&top, &top_500k)?;
    assert!(d.max_abs > 1e-3, "the rotary base was not read: {d:?}");
    Ok(())
}

/// A transposed (non-standard-layout) view of the ids gives the same logits as a contiguous one.
#[test]
fn strided_input_is_accepted() -> TestResult {
    let (checkpoint, anatomy) = open_model(&hf_reference_dir("llama")?, &ArchChoice::Detect)?;
    let model = Loader::new(&checkpoint, &anatomy)?.model()?;
    let (ModelInput::Tokens(ids), _) = reference("llama")? else {
        return Err("llama reference input is not token ids".into());
    };
    let transposed: Array2<i64> = ids.t().to_owned();
    let a = forward::forward(&model, Input::Tokens(ids.view()))?;
    let b = forward::forward(&model, Input::Tokens(transposed.t()))?;
    assert_eq!(a, b);
    Ok(())
}

/// DeiT with a teacher averages a CLS head and a distillation-token head. With the
/// distillation token, its position row and its head equal to the CLS ones, both tokens stay
/// equal through every layer, so the averaged logits must equal the single-head
/// DeiTForImageClassification's on the same weights. (No HF DeiT reference exists here; this
/// checks the wiring of the second token and head.)
#[test]
fn deit_teacher_head_averages_the_cls_and_distillation_heads() -> TestResult {
    let (tensors, config) = load(&hf_reference_dir("vit")?)?;
    let mut config = config.ok_or("config.json")?;
    config["model_type"] = json!("deit");
    let cls = tensors
        .get("vit.embeddings.cls_token")
        .ok_or("cls")?
        .values();
    let hidden = cls.len();
    let cls_position = tensors
        .get("vit.embeddings.position_embeddings")
        .ok_or("positions")?
        .values()[..hidden]
        .to_vec();
    let head = (
        tensors
            .get("classifier.weight")
            .ok_or("classifier")?
            .values(),
        tensors.get("classifier.bias").ok_or("classifier")?.values(),
    );
    let parts = |teacher: bool| DeitParts {
        distillation_token: cls.clone(),
        distillation_position: cls_position.clone(),
        distillation_head: teacher.then(|| head.clone()),
    };
    let work = tempfile::tempdir()?;
    let (input, _) = reference("vit")?;
    let mut logits = Vec::new();
    for teacher in [false, true] {
        let dir = work.path().join(format!("deit-{teacher}"));
        save(
            &dir,
            &hf_vit_to_deit(&tensors, &parts(teacher))?,
            Some(&config),
        )?;
        let (checkpoint, anatomy) = open_model(&dir, &ArchChoice::Detect)?;
        assert_eq!(anatomy.prefix, "deit.");
        let model = Loader::new(&checkpoint, &anatomy)?.model()?;
        assert_eq!(
            model
                .head
                .as_ref()
                .is_some_and(|h| h.distillation.is_some()),
            teacher
        );
        logits.push(forward::forward(&model, input.view())?);
    }
    let d = compare(&logits[0], &logits[1])?;
    assert!(d.max_abs <= 1e-5, "{d:?}");
    Ok(())
}
