//! Helpers shared by the plugin's integration tests (one test binary).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::SupervisedTraining;
use burn::train::metric::LossMetric;
use ndarray::{Array2, ArrayD, IxDyn};
use vcycle_plugin::data::{
    BYTE_VOCAB, ByteWindows, LmBatch, LmBatcher, MlmBatch, MlmBatcher, split_train_valid,
};
use vcycle_plugin::{Gpt2, Gpt2Config, LevelConfig, ProgressLine, Segment, VCycleConfig};

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vcycle-plugin-test-")
        .tempdir()
        .expect("temporary directory")
}

/// The CPU device without autodiff (forward checks).
pub fn device() -> Device {
    Device::flex()
}

/// A committed fixture directory (`fixtures/<name>`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// A folder of `fixtures/hf-reference`: a tiny HuggingFace checkpoint with the input and the
/// logits transformers computed for it (`scripts/hf_make_reference.py` regenerates them).
pub fn hf_reference_dir(name: &str) -> PathBuf {
    let dir = fixture_dir("hf-reference").join(name);
    assert!(
        dir.is_dir(),
        "HF reference folder {} is missing",
        dir.display()
    );
    dir
}

/// The bundled corpus.
pub fn corpus() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/rust-book.txt");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tiny byte-level GPT-2: 2 layers, width 32, 4 heads, FFN 64, 32 positions.
pub fn tiny_gpt2() -> Gpt2Config {
    Gpt2Config::new(256, 32, 32, 2, 4, 64)
}

/// A fresh [`tiny_gpt2`] on the autodiff CPU device.
pub fn fresh_gpt2() -> Gpt2 {
    tiny_gpt2().init(&Device::flex().autodiff()).expect("model")
}

pub type Loaders = (Arc<dyn DataLoader<LmBatch>>, Arc<dyn DataLoader<LmBatch>>);

/// Train and validation loaders over the first `bytes` of the corpus: windows of `seq` tokens,
/// batches of `batch`, made on the CPU (the default device is a GPU's in a build with one).
pub fn loaders(bytes: usize, seq: usize, batch: usize) -> Loaders {
    let text = corpus();
    let (train, valid) = split_train_valid(&text[..bytes.min(text.len())], 10, 512);
    let train = DataLoaderBuilder::new(LmBatcher)
        .batch_size(batch)
        .shuffle(7)
        .set_device(device())
        .build(ByteWindows::new(train, seq, seq));
    let valid = DataLoaderBuilder::new(LmBatcher)
        .batch_size(batch)
        .set_device(device())
        .build(ByteWindows::new(valid, seq, seq));
    (train, valid)
}

/// Masked-LM train and validation loaders over the first 24,000 bytes of the corpus: windows
/// of 16 bytes, batches of 4, 15% of the bytes masked (token `BYTE_VOCAB`).
pub fn mlm_loaders() -> (Arc<dyn DataLoader<MlmBatch>>, Arc<dyn DataLoader<MlmBatch>>) {
    let text = corpus();
    let (train, valid) = split_train_valid(&text[..24_000], 10, 512);
    let mask = BYTE_VOCAB as i64;
    let train = DataLoaderBuilder::new(MlmBatcher::new(mask, 0.15, 1))
        .batch_size(4)
        .shuffle(3)
        .build(ByteWindows::new(train, 16, 16));
    let valid = DataLoaderBuilder::new(MlmBatcher::new(mask, 0.15, 2))
        .batch_size(4)
        .build(ByteWindows::new(valid, 16, 16));
    (train, valid)
}

/// Two levels: 2 layers × 4 heads, then `heads` × `layers` below.
pub fn two_levels(heads: Option<usize>, layers: Option<usize>, steps: usize) -> VCycleConfig {
    VCycleConfig::new(
        vec![
            LevelConfig::new(3e-3),
            LevelConfig::new(5e-3).with_heads(heads).with_layers(layers),
        ],
        steps,
        steps,
        steps,
    )
}

/// The user's SupervisedTraining for a segment, quiet.
pub fn quiet_training(
    _segment: &Segment,
    training: SupervisedTraining<Gpt2>,
) -> SupervisedTraining<Gpt2> {
    training
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .renderer(Box::new(ProgressLine::quiet()))
        .with_application_logger(None)
}

/// Burn logits of `model` on `ids`, as an ndarray.
pub fn burn_logits(model: &Gpt2, ids: &Array2<i64>, device: &Device) -> ArrayD<f32> {
    logits_of(|input| model.forward(input), ids, device)
}

/// The logits `forward` computes for `ids`, as an ndarray.
pub fn logits_of(
    forward: impl FnOnce(Tensor<2, Int>) -> Tensor<3>,
    ids: &Array2<i64>,
    device: &Device,
) -> ArrayD<f32> {
    let (b, s) = ids.dim();
    let input: Tensor<2, Int> = Tensor::from_data(
        TensorData::new(ids.iter().copied().collect::<Vec<i64>>(), [b, s]),
        device,
    );
    let logits = forward(input);
    let dims = logits.dims();
    let values = logits.into_data().try_to_vec::<f32>().expect("f32 logits");
    ArrayD::from_shape_vec(IxDyn(&dims), values).expect("logit shape")
}

/// The input ids and the logits HuggingFace computed, from `reference.safetensors` of an
/// `fixtures/hf-reference` folder.
pub fn hf_reference_logits(dir: &Path) -> (Array2<i64>, ArrayD<f32>) {
    let reference =
        vcycle_transform::Checkpoint::open(dir.join("reference.safetensors")).expect("reference");
    let ids: Vec<i64> = reference
        .bytes("input_ids")
        .expect("input_ids")
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let shape = reference
        .info("input_ids")
        .expect("input_ids")
        .shape
        .clone();
    let ids = Array2::from_shape_vec((shape[0], shape[1]), ids).expect("ids");
    let logits_shape = reference.info("logits").expect("logits").shape.clone();
    let logits: Vec<f32> = reference
        .values("logits")
        .expect("logits")
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let logits = ArrayD::from_shape_vec(IxDyn(&logits_shape), logits).expect("logits");
    (ids, logits)
}

/// The transform library's logits of the checkpoint at `dir` on `ids`.
pub fn transform_logits(dir: &Path, ids: &Array2<i64>) -> ArrayD<f32> {
    let (checkpoint, anatomy) = vcycle_transform::open_model(dir, &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    vcycle_transform::verify::run_tokens(&checkpoint, &anatomy, ids).expect("transform forward")
}

/// Every tensor of a safetensors file, by name: (shape, little-endian bytes).
pub fn tensors(file: &Path) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let checkpoint = vcycle_transform::Checkpoint::open(file).expect("checkpoint");
    checkpoint
        .tensors()
        .iter()
        .map(|(name, info)| {
            (
                name.clone(),
                (
                    info.shape.clone(),
                    checkpoint.bytes(name).expect("tensor bytes").to_vec(),
                ),
            )
        })
        .collect()
}

/// For `scripts/hf-check.sh`: with `VCYCLE_HF_CHECK_DIR` set, keeps a checkpoint the plugin
/// wrote (a copy of `model_dir` under `$VCYCLE_HF_CHECK_DIR/name`) with the input and the logits
/// Burn computed for it (`burn-logits.json`), so that HuggingFace transformers can load it and
/// be compared with Burn. Without the variable it does nothing.
pub fn keep_for_hf_check(
    name: &str,
    model_dir: &Path,
    input_name: &str,
    input: (Vec<usize>, Vec<f64>),
    logits: &ArrayD<f32>,
) {
    let Some(root) = std::env::var_os("VCYCLE_HF_CHECK_DIR") else {
        return;
    };
    let out = PathBuf::from(root).join(name);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir.join(file), out.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", model_dir.join(file).display()));
    }
    let record = serde_json::json!({
        "input": input_name,
        "input_shape": input.0,
        "input_values": input.1,
        "logits_shape": logits.shape(),
        "logits": logits.iter().copied().collect::<Vec<f32>>(),
    });
    let file = out.join("burn-logits.json");
    std::fs::write(&file, record.to_string()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

/// Token ids as `keep_for_hf_check` records them.
pub fn ids_record(ids: &Array2<i64>) -> (Vec<usize>, Vec<f64>) {
    (
        ids.shape().to_vec(),
        ids.iter().map(|&i| i as f64).collect(),
    )
}
