//! The Burn ViT against HuggingFace's logits, and a V-cycle on real images: the bundled 8×8
//! handwritten digits.

use std::path::PathBuf;

use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::{Device, Tensor, TensorData};
use ndarray::{ArrayD, IxDyn};
use vcycle_plugin::data::{Digits, ImageBatcher};
use vcycle_plugin::{Resizable, VCycle, Vit, VitConfig};
use vcycle_transform::verify::compare;

use crate::support::*;

fn vit_logits(model: &Vit, pixels: &[f32], shape: [usize; 4], device: &Device) -> ArrayD<f32> {
    let images = Tensor::<4>::from_data(TensorData::new(pixels.to_vec(), shape), device);
    let logits = model.forward(images);
    let dims = logits.dims();
    let values = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
    ArrayD::from_shape_vec(IxDyn(&dims), values).expect("logit shape")
}

/// A checkpoint saved by HuggingFace `save_pretrained` (`ViTForImageClassification`, 32×32
/// RGB images in patches of 8), imported into Burn, reproduces the logits HuggingFace computed.
#[test]
fn imports_huggingface_checkpoint_and_matches_its_logits() {
    let device = device();
    let dir = hf_reference_dir("vit");
    let model = Vit::load(&dir, &device).expect("import HF vit");
    let config = model.config();
    assert_eq!(
        (
            config.image_size,
            config.patch_size,
            config.channels,
            config.labels
        ),
        (32, 8, 3, 10)
    );
    let reference =
        vcycle_transform::Checkpoint::open(dir.join("reference.safetensors")).expect("reference");
    let shape = reference
        .info("pixel_values")
        .expect("pixels")
        .shape
        .clone();
    let pixels: Vec<f32> = reference
        .values("pixel_values")
        .expect("pixels")
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let logits_shape = reference.info("logits").expect("logits").shape.clone();
    let hf: Vec<f32> = reference
        .values("logits")
        .expect("logits")
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let hf = ArrayD::from_shape_vec(IxDyn(&logits_shape), hf).expect("logits");
    let shape = [shape[0], shape[1], shape[2], shape[3]];
    let d = compare(&hf, &vit_logits(&model, &pixels, shape, &device)).expect("same shape");
    println!("HF vit reference logits vs burn: {d:?}");
    assert!(d.max_abs <= 1e-5, "{d:?}");
}

/// Exported, a Burn ViT is read by the transform as ViT with its sizes, and importing it back
/// and exporting again gives the same bytes.
#[test]
fn export_is_read_as_vit_and_round_trips_exactly() {
    let device = device();
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let model = VitConfig::new(8, 2, 1, 10, 48, 3, 4, 80)
        .init(&device)
        .expect("model");
    model.save_dir(&a).expect("export");
    let (checkpoint, anatomy) =
        vcycle_transform::open_model(&a, &Default::default()).expect("open");
    assert_eq!(anatomy.rules.name, "vit");
    let dims = &anatomy.dims;
    assert_eq!(
        (dims.layers, dims.hidden, dims.heads, dims.ffn),
        (3, 48, 4, 80)
    );
    assert_eq!(dims.fixed.get("positions"), Some(&17));
    assert_eq!(
        checkpoint
            .info("vit.embeddings.patch_embeddings.projection.weight")
            .map(|i| i.shape.clone()),
        Some(vec![48, 1, 2, 2])
    );
    assert_eq!(
        checkpoint
            .info("classifier.weight")
            .map(|i| i.shape.clone()),
        Some(vec![10, 48]),
        "torch Linear layout [out, in]"
    );
    let back = Vit::load(&a, &device).expect("import");
    assert_eq!(back.config(), model.config());
    back.save_dir(&b).expect("export again");
    assert_eq!(
        tensors(&a.join("model.safetensors")),
        tensors(&b.join("model.safetensors"))
    );
}

fn digits_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/digits/digits.csv")
}

/// A 2-level V-cycle of a ViT on the digits (patches of 2 pixels: 16 patches and the class
/// token): heads 4 → 2 and layers 2 → 1 at the bottom. Training lowers the validation loss
/// from chance, and growing back with α = 0 restores the saved full model bit for bit.
#[test]
fn vit_cycle_on_digits_learns_and_alpha_zero_restores() {
    let (train, valid) = Digits::split(Digits::load(&digits_path()).expect("digits"), 5);
    let batcher = ImageBatcher::new(Digits::SIDE);
    let train = DataLoaderBuilder::new(batcher.clone())
        .batch_size(32)
        .shuffle(3)
        .set_device(device())
        .build(train);
    let valid = DataLoaderBuilder::new(batcher)
        .batch_size(120)
        .set_device(device())
        .build(valid);
    let device = Device::flex().autodiff();
    device.seed(11);
    let model = VitConfig::new(Digits::SIDE, 2, 1, Digits::CLASSES, 32, 2, 4, 64)
        .init(&device)
        .expect("model");
    let dir = tempdir();
    let run = dir.path().join("run");
    let outcome = VCycle::new(
        two_levels(Some(2), Some(1), 200).with_alpha(0.0),
        &run,
        device,
    )
    .expect("driver")
    .run(model, train, valid, |_, training| {
        training
            .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
            .with_application_logger(None)
    })
    .expect("ViT V-cycle");
    assert_eq!(outcome.boundaries.len(), 3);
    let first = &outcome.boundaries[0];
    let last = outcome.boundaries.last().expect("records");
    println!(
        "ViT digits: valid loss {:.3} after the first segment, {:.3} at the end (chance: {:.3})",
        first.valid_loss_before,
        last.valid_loss_before,
        (Digits::CLASSES as f64).ln()
    );
    let chance = (Digits::CLASSES as f64).ln();
    assert!(last.valid_loss_before < 0.6 * chance);

    let shape = [3, 1, Digits::SIDE, Digits::SIDE];
    let pixels: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| (i * 37 % 17) as f32 / 16.0)
        .collect();
    keep_for_hf_check(
        "vit-vcycle-final",
        &outcome.final_dir,
        "pixel_values",
        (
            shape.to_vec(),
            pixels.iter().map(|&p| f64::from(p)).collect(),
        ),
        &vit_logits(
            &Vit::load(&outcome.final_dir, &super::support::device()).expect("final"),
            &pixels,
            shape,
            &super::support::device(),
        ),
    );

    let bottom = Vit::load(
        &run.join("checkpoints/02-bottom-L2"),
        &super::support::device(),
    )
    .expect("bottom");
    assert_eq!((bottom.config().heads, bottom.config().layers), (2, 1));
    let saved = run.join("checkpoints/01-down-L1");
    let grown = run.join("checkpoints/02-to-L1");
    assert_eq!(
        tensors(&saved.join("model.safetensors")),
        tensors(&grown.join("model.safetensors"))
    );
}
