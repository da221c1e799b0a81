//! The Burn BERT against the transform library's forward pass and HuggingFace's logits.

use vcycle_plugin::{Bert, BertConfig, Resizable};
use vcycle_transform::verify::{compare, random_tokens};

use crate::support::*;

fn bert_logits(model: &Bert, ids: &ndarray::Array2<i64>) -> ndarray::ArrayD<f32> {
    let device = device();
    let (b, s) = ids.dim();
    let input = burn::tensor::Tensor::from_data(
        burn::tensor::TensorData::new(ids.iter().copied().collect::<Vec<i64>>(), [b, s]),
        &device,
    );
    let logits = model.forward(input);
    let dims = logits.dims();
    let values = logits.into_data().try_to_vec::<f32>().expect("f32");
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&dims), values).expect("shape")
}

#[test]
fn bert_export_matches_transform_forward_and_round_trips() {
    let device = device();
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let model = BertConfig::new(96, 24, 48, 3, 4, 80)
        .with_init_std(0.2)
        .init(&device)
        .expect("model");
    model.save_dir(&a).expect("export");
    let ids = random_tokens(4, 3, 24, 96).expect("tokens");
    let d = compare(&transform_logits(&a, &ids), &bert_logits(&model, &ids)).expect("shape");
    println!("bert export vs transform forward: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");

    let (checkpoint, anatomy) =
        vcycle_transform::open_model(&a, &Default::default()).expect("open");
    assert_eq!(anatomy.rules.name, "bert");
    assert_eq!(
        checkpoint
            .info("bert.encoder.layer.0.intermediate.dense.weight")
            .map(|i| i.shape.clone()),
        Some(vec![80, 48]),
        "torch.nn.Linear layout [out, in]"
    );
    assert_eq!(
        checkpoint.metadata().get("format").map(String::as_str),
        Some("pt")
    );

    let back = Bert::load(&a, &device).expect("import");
    back.save_dir(&b).expect("export again");
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors"))
    );
}

#[test]
fn bert_imports_fixture_and_huggingface_checkpoint() {
    let device = device();
    let fixture = fixture_dir("bert-tiny");
    let model = Bert::load(&fixture, &device).expect("import fixture");
    let ids = random_tokens(8, 2, 16, 128).expect("tokens");
    let d = compare(
        &transform_logits(&fixture, &ids),
        &bert_logits(&model, &ids),
    )
    .expect("shape");
    println!("fixture bert-tiny, burn vs transform: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");

    let dir = hf_reference_dir("bert");
    let model = Bert::load(&dir, &device).expect("import HF bert");
    let (ids, hf) = hf_reference_logits(&dir);
    let d = compare(&hf, &bert_logits(&model, &ids)).expect("shape");
    println!("HF bert reference logits vs burn: {d:?}");
    assert!(d.max_abs <= 1e-4, "{d:?}");
}
