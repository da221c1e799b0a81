//! Test helpers: whole checkpoints in memory, renamed and rewritten, saved as model directories.
//! This is where the tests spell out other naming schemes (timm, DeiT) for the same weights.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

use crate::read::Checkpoint;

pub type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One tensor's dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Raw {
    /// An f32 tensor.
    pub fn f32(shape: &[usize], values: &[f32]) -> Raw {
        Raw {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of an f32 tensor.
    pub fn values(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// Every tensor and the config.json of a model directory.
pub fn load(dir: &Path) -> TestResult<(BTreeMap<String, Raw>, Option<Value>)> {
    let ckpt = Checkpoint::open(dir)?;
    let mut tensors = BTreeMap::new();
    for (name, info) in ckpt.tensors() {
        let data = ckpt.bytes(name).ok_or("tensor bytes")?.to_vec();
        tensors.insert(
            name.clone(),
            Raw {
                dtype: info.dtype,
                shape: info.shape.clone(),
                data,
            },
        );
    }
    Ok((tensors, ckpt.config().cloned()))
}

/// Writes `model.safetensors` (and `config.json` when given) into a new directory.
pub fn save(dir: &Path, tensors: &BTreeMap<String, Raw>, config: Option<&Value>) -> TestResult {
    std::fs::create_dir_all(dir)?;
    let views = tensors
        .iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data)?,
            ))
        })
        .collect::<TestResult<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &dir.join("model.safetensors"))?;
    if let Some(config) = config {
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(config)?,
        )?;
    }
    Ok(())
}

/// Concatenates tensors along their first axis (fusing q, k, v into one qkv projection).
pub fn concat_rows(parts: &[&Raw]) -> TestResult<Raw> {
    let first = parts.first().ok_or("nothing to concatenate")?;
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    Ok(Raw {
        dtype: first.dtype,
        shape,
        data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
    })
}

/// The HF ViT reference renamed to timm's `VisionTransformer` names, q/k/v fused into `qkv`.
pub fn hf_vit_to_timm(
    hf: &BTreeMap<String, Raw>,
    layers: usize,
) -> TestResult<BTreeMap<String, Raw>> {
    let get = |name: &str| hf.get(name).ok_or_else(|| format!("missing {name}"));
    let mut out = BTreeMap::new();
    for (from, to) in [
        ("vit.embeddings.cls_token", "cls_token"),
        ("vit.embeddings.position_embeddings", "pos_embed"),
        (
            "vit.embeddings.patch_embeddings.projection.weight",
            "patch_embed.proj.weight",
        ),
        (
            "vit.embeddings.patch_embeddings.projection.bias",
            "patch_embed.proj.bias",
        ),
        ("vit.layernorm.weight", "norm.weight"),
        ("vit.layernorm.bias", "norm.bias"),
        ("classifier.weight", "head.weight"),
        ("classifier.bias", "head.bias"),
    ] {
        out.insert(to.to_string(), get(from)?.clone());
    }
    for i in 0..layers {
        let hf_layer = format!("vit.encoder.layer.{i}");
        let timm = format!("blocks.{i}");
        for kind in ["weight", "bias"] {
            for (from, to) in [
                ("layernorm_before", "norm1"),
                ("layernorm_after", "norm2"),
                ("attention.output.dense", "attn.proj"),
                ("intermediate.dense", "mlp.fc1"),
                ("output.dense", "mlp.fc2"),
            ] {
                out.insert(
                    format!("{timm}.{to}.{kind}"),
                    get(&format!("{hf_layer}.{from}.{kind}"))?.clone(),
                );
            }
            let q = get(&format!("{hf_layer}.attention.attention.query.{kind}"))?;
            let k = get(&format!("{hf_layer}.attention.attention.key.{kind}"))?;
            let v = get(&format!("{hf_layer}.attention.attention.value.{kind}"))?;
            out.insert(format!("{timm}.attn.qkv.{kind}"), concat_rows(&[q, k, v])?);
        }
    }
    Ok(out)
}

/// The HF ViT checkpoint renamed to DeiT: prefix `deit.`, a distillation token (given) after
/// CLS with its own position row (given), and either one `classifier` or, `with_teacher`,
/// `cls_classifier` (the ViT classifier) plus `distillation_classifier` (given).
pub struct DeitParts {
    pub distillation_token: Vec<f32>,
    pub distillation_position: Vec<f32>,
    pub distillation_head: Option<(Vec<f32>, Vec<f32>)>,
}

pub fn hf_vit_to_deit(
    hf: &BTreeMap<String, Raw>,
    parts: &DeitParts,
) -> TestResult<BTreeMap<String, Raw>> {
    let mut out = BTreeMap::new();
    for (name, raw) in hf {
        let renamed = match name.strip_prefix("vit.") {
            Some(rest) => format!("deit.{rest}"),
            None => name.clone(),
        };
        out.insert(renamed, raw.clone());
    }
    let hidden = parts.distillation_token.len();
    out.insert(
        "deit.embeddings.distillation_token".into(),
        Raw::f32(&[1, 1, hidden], &parts.distillation_token),
    );
    let pos = out
        .get("deit.embeddings.position_embeddings")
        .ok_or("no position embeddings")?
        .clone();
    let mut rows = pos.values();
    let tail = rows.split_off(hidden);
    rows.extend_from_slice(&parts.distillation_position);
    rows.extend(tail);
    out.insert(
        "deit.embeddings.position_embeddings".into(),
        Raw::f32(&[1, pos.shape[1] + 1, hidden], &rows),
    );
    if let Some((weight, bias)) = &parts.distillation_head {
        for kind in ["weight", "bias"] {
            let raw = out
                .remove(&format!("classifier.{kind}"))
                .ok_or("no classifier")?;
            out.insert(format!("cls_classifier.{kind}"), raw);
        }
        let labels = bias.len();
        out.insert(
            "distillation_classifier.weight".into(),
            Raw::f32(&[labels, hidden], weight),
        );
        out.insert(
            "distillation_classifier.bias".into(),
            Raw::f32(&[labels], bias),
        );
    }
    Ok(out)
}
