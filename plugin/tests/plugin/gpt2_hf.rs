//! The Burn GPT-2 against the transform library's forward pass and HuggingFace's logits, on
//! checkpoints written by either side.

use vcycle_plugin::{Gpt2, Gpt2Config, Resizable};
use vcycle_transform::verify::{compare, random_tokens};

use crate::support::*;

/// A randomly initialised Burn model, exported: the transform reads it as GPT-2 and both
/// forward passes agree.
#[test]
fn burn_export_matches_transform_forward() {
    let device = device();
    let dir = tempdir();
    let out = dir.path().join("gpt2");
    let config = Gpt2Config::new(96, 24, 48, 3, 4, 80).with_init_std(0.2);
    let model = config.init(&device).expect("model");
    model.save_dir(&out).expect("export");

    let ids = random_tokens(11, 3, 24, 96).expect("tokens");
    let burn = burn_logits(&model, &ids, &device);
    let reference = transform_logits(&out, &ids);
    let d = compare(&reference, &burn).expect("same shape");
    println!("burn export vs transform forward: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");

    // The transform found GPT-2 with the sizes of the Burn config.
    let (checkpoint, anatomy) =
        vcycle_transform::open_model(&out, &Default::default()).expect("open");
    assert_eq!(anatomy.rules.name, "gpt2");
    assert_eq!(
        (
            anatomy.dims.layers,
            anatomy.dims.hidden,
            anatomy.dims.heads,
            anatomy.dims.ffn
        ),
        (3, 48, 4, 80)
    );
    assert!(anatomy.dims.tied);
    // transformers refuses safetensors files whose metadata format is not `pt`.
    assert_eq!(
        checkpoint.metadata().get("format").map(String::as_str),
        Some("pt")
    );
    assert!(checkpoint.info("lm_head.weight").is_none());
    assert_eq!(
        checkpoint
            .info("transformer.h.0.attn.c_attn.weight")
            .map(|i| i.shape.clone()),
        Some(vec![48, 144]),
        "Conv1D layout [in, out] with fused q|k|v"
    );
}

/// Export, import: the same tensors, bit for bit, and the same function.
#[test]
fn export_import_round_trip_is_exact() {
    let device = device();
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let model = tiny_gpt2().init(&device).expect("model");
    model.save_dir(&a).expect("export");
    let back = Gpt2::load(&a, &device).expect("import");
    assert_eq!(back.config(), model.config());
    back.save_dir(&b).expect("export again");
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors"))
    );
}

/// A transform-made checkpoint (the committed fixture) imported into Burn computes what the
/// transform computes.
#[test]
fn imports_transform_fixture() {
    let device = device();
    let fixture = fixture_dir("gpt2-tiny");
    let model = Gpt2::load(&fixture, &device).expect("import fixture");
    let ids = random_tokens(3, 2, 16, 128).expect("tokens");
    let d = compare(
        &transform_logits(&fixture, &ids),
        &burn_logits(&model, &ids, &device),
    )
    .expect("same shape");
    println!("fixture gpt2-tiny, burn vs transform: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");
}

/// A checkpoint saved by HuggingFace `save_pretrained`, imported into Burn, reproduces the
/// logits HuggingFace computed.
#[test]
fn imports_huggingface_checkpoint_and_matches_its_logits() {
    let device = device();
    let dir = hf_reference_dir("gpt2");
    let model = Gpt2::load(&dir, &device).expect("import HF gpt2");
    let (ids, hf) = hf_reference_logits(&dir);
    let d = compare(&hf, &burn_logits(&model, &ids, &device)).expect("same shape");
    println!("HF gpt2 reference logits vs burn: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");
}
