//! Tiny checkpoints built from the rule files themselves: every tensor a rule declares (plus
//! the optional ones asked for) gets the shape its axes imply and seeded random values. Used
//! by the committed fixtures (`cargo run --example build_fixtures`) and by the tests.

use std::collections::BTreeMap;
use std::path::Path;

use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal};
use safetensors::Dtype;
use serde_json::{Value, json};

use crate::anatomy::Dims;
use crate::error::{Error, Result};
use crate::plan::TensorPlan;
use crate::rules::{Axis, Direction, Rules};

/// What to build.
#[derive(Debug, Clone)]
pub struct FixtureSpec {
    /// A built-in preset name.
    pub arch: String,
    pub dims: Dims,
    /// Templates of optional tensors to include.
    pub optional: Vec<String>,
    /// Templates of tensors written as int64 `0..n` (BERT's `embeddings.position_ids`).
    pub arange: Vec<String>,
    pub dtype: Dtype,
    pub seed: u64,
}

/// A built tensor.
#[derive(Debug, Clone)]
pub struct FixtureTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The tiny models of the fixtures and docs: 4 layers, hidden 64, 4 heads of 16, FFN 256,
/// vocabulary 128, 64 positions.
pub fn tiny_dims(tied: bool) -> Dims {
    Dims {
        layers: 4,
        hidden: 64,
        heads: 4,
        kv_heads: 4,
        head_dim: 16,
        ffn: 256,
        tied,
        fixed: BTreeMap::from([
            ("vocab".to_string(), 128),
            ("positions".to_string(), 64),
            ("token_types".to_string(), 2),
        ]),
    }
}

/// The BertForMaskedLM fixture.
pub fn bert_mlm(seed: u64) -> FixtureSpec {
    FixtureSpec {
        arch: "bert".into(),
        dims: tiny_dims(true),
        optional: [
            "cls.predictions.transform.dense.weight",
            "cls.predictions.transform.dense.bias",
            "cls.predictions.transform.LayerNorm.weight",
            "cls.predictions.transform.LayerNorm.bias",
            "cls.predictions.bias",
            "embeddings.position_ids",
        ]
        .map(String::from)
        .to_vec(),
        arange: vec!["embeddings.position_ids".into()],
        dtype: Dtype::F32,
        seed,
    }
}

/// The GPT2LMHeadModel fixture (lm_head tied, so absent).
pub fn gpt2_lm(seed: u64) -> FixtureSpec {
    FixtureSpec {
        arch: "gpt2".into(),
        dims: tiny_dims(true),
        optional: Vec::new(),
        arange: Vec::new(),
        dtype: Dtype::F32,
        seed,
    }
}

/// The Llama fixtures of the issue: 4 layers, hidden 64, 4 query heads over 2 key/value heads
/// of 16, FFN 176, vocabulary 128; `tied` drops `lm_head` (tie_word_embeddings = true).
pub fn llama_lm(seed: u64, tied: bool) -> FixtureSpec {
    FixtureSpec {
        arch: "llama".into(),
        dims: Dims {
            layers: 4,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            ffn: 176,
            tied,
            fixed: BTreeMap::from([("vocab".to_string(), 128), ("positions".to_string(), 64)]),
        },
        optional: if tied {
            Vec::new()
        } else {
            vec!["lm_head.weight".into()]
        },
        arange: Vec::new(),
        dtype: Dtype::F32,
        seed,
    }
}

/// The ViTForImageClassification fixture: 32×32 RGB images in 8×8 patches (16 patches + CLS),
/// 4 layers, hidden 64, 4 heads of 16, FFN 256, 10 labels.
pub fn vit_classifier(seed: u64) -> FixtureSpec {
    FixtureSpec {
        arch: "vit".into(),
        dims: Dims {
            layers: 4,
            hidden: 64,
            heads: 4,
            kv_heads: 4,
            head_dim: 16,
            ffn: 256,
            tied: false,
            fixed: BTreeMap::from([
                ("channels".to_string(), 3),
                ("patch".to_string(), 8),
                ("positions".to_string(), 17),
                ("labels".to_string(), 10),
                ("image_size".to_string(), 32),
            ]),
        },
        optional: [
            "encoder.layer.{layer}.attention.attention.query.bias",
            "encoder.layer.{layer}.attention.attention.key.bias",
            "encoder.layer.{layer}.attention.attention.value.bias",
            "classifier.weight",
            "classifier.bias",
        ]
        .map(String::from)
        .to_vec(),
        arange: Vec::new(),
        dtype: Dtype::F32,
        seed,
    }
}

/// FNV-1a, so each tensor's values depend on its name and the seed only.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Builds every tensor of the fixture, sorted by name.
pub fn build(spec: &FixtureSpec) -> Result<Vec<FixtureTensor>> {
    let rules = Rules::preset(&spec.arch)?;
    let prefix = rules.prefixes.first().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for rule in &rules.tensors {
        if rule.optional && !spec.optional.contains(&rule.template) {
            continue;
        }
        let shape = rule
            .axes
            .iter()
            .map(|a| {
                spec.dims.axis(a).ok_or_else(|| Error::RuleFile {
                    file: rules.name.clone(),
                    message: format!("fixture has no size for axis `{a}` of `{}`", rule.template),
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        let layers: Vec<Option<usize>> = if rule.layered {
            (0..spec.dims.layers).map(Some).collect()
        } else {
            vec![None]
        };
        for layer in layers {
            let name = rule.name(&prefix, layer);
            let numel: usize = shape.iter().product();
            if spec.arange.contains(&rule.template) {
                let data = (0..numel as i64).flat_map(i64::to_le_bytes).collect();
                out.push(FixtureTensor {
                    name,
                    dtype: Dtype::I64,
                    shape: shape.clone(),
                    data,
                });
                continue;
            }
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed ^ stable_hash(&name));
            let role = rule.role.as_deref().unwrap_or("");
            let is_norm = role.contains("norm");
            let fan_in = rule.axes.iter().zip(&shape).find_map(|(a, &n)| {
                matches!(
                    a,
                    Axis::Model {
                        dir: Direction::In,
                        ..
                    }
                )
                .then_some(n)
            });
            let (offset, scale) = match (shape.len(), is_norm, rule.template.ends_with("weight")) {
                (_, true, true) => (1.0, 0.3),
                (_, true, false) => (0.0, 0.3),
                (1, false, _) => (0.0, 0.2),
                _ if rule.embedding => (0.0, 0.5),
                _ => (
                    0.0,
                    1.0 / (fan_in.unwrap_or(spec.dims.hidden) as f64).sqrt(),
                ),
            };
            let values: Vec<f64> = (0..numel)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    offset + scale * z
                })
                .collect();
            let data =
                crate::dtype::encode(spec.dtype, &values).ok_or(Error::UnsupportedDtype {
                    tensor: name.clone(),
                    dtype: spec.dtype,
                })?;
            out.push(FixtureTensor {
                name,
                dtype: spec.dtype,
                shape: shape.clone(),
                data,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The HuggingFace config.json of a fixture.
pub fn config(spec: &FixtureSpec) -> Result<Value> {
    let d = &spec.dims;
    let fixed = |k: &str| d.fixed.get(k).copied().unwrap_or(0);
    let dtype = match spec.dtype {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        _ => "float32",
    };
    match spec.arch.as_str() {
        "bert" => Ok(json!({
            "architectures": ["BertForMaskedLM"],
            "attention_probs_dropout_prob": 0.1,
            "dtype": dtype,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": d.hidden,
            "initializer_range": 0.02,
            "intermediate_size": d.ffn,
            "layer_norm_eps": 1e-12,
            "max_position_embeddings": fixed("positions"),
            "model_type": "bert",
            "num_attention_heads": d.heads,
            "num_hidden_layers": d.layers,
            "pad_token_id": 0,
            "tie_word_embeddings": d.tied,
            "type_vocab_size": fixed("token_types"),
            "vocab_size": fixed("vocab"),
        })),
        "gpt2" => Ok(json!({
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.1,
            "bos_token_id": fixed("vocab").saturating_sub(1),
            "dtype": dtype,
            "embd_pdrop": 0.1,
            "eos_token_id": fixed("vocab").saturating_sub(1),
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-5,
            "model_type": "gpt2",
            "n_embd": d.hidden,
            "n_head": d.heads,
            "n_inner": d.ffn,
            "n_layer": d.layers,
            "n_positions": fixed("positions"),
            "resid_pdrop": 0.1,
            "tie_word_embeddings": d.tied,
            "vocab_size": fixed("vocab"),
        })),
        "llama" => Ok(json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": 1,
            "dtype": dtype,
            "eos_token_id": 2,
            "head_dim": d.head_dim,
            "hidden_act": "silu",
            "hidden_size": d.hidden,
            "initializer_range": 0.02,
            "intermediate_size": d.ffn,
            "max_position_embeddings": fixed("positions"),
            "mlp_bias": false,
            "model_type": "llama",
            "num_attention_heads": d.heads,
            "num_hidden_layers": d.layers,
            "num_key_value_heads": d.kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "tie_word_embeddings": d.tied,
            "use_cache": true,
            "vocab_size": fixed("vocab"),
        })),
        "vit" => {
            let labels = fixed("labels");
            let id2label: serde_json::Map<String, Value> = (0..labels)
                .map(|i| (i.to_string(), Value::from(format!("LABEL_{i}"))))
                .collect();
            let label2id: serde_json::Map<String, Value> = (0..labels)
                .map(|i| (format!("LABEL_{i}"), Value::from(i)))
                .collect();
            Ok(json!({
                "architectures": ["ViTForImageClassification"],
                "attention_probs_dropout_prob": 0.0,
                "dtype": dtype,
                "encoder_stride": fixed("patch"),
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0,
                "hidden_size": d.hidden,
                "id2label": id2label,
                "image_size": fixed("image_size"),
                "initializer_range": 0.02,
                "intermediate_size": d.ffn,
                "label2id": label2id,
                "layer_norm_eps": 1e-12,
                "model_type": "vit",
                "num_attention_heads": d.heads,
                "num_channels": fixed("channels"),
                "num_hidden_layers": d.layers,
                "patch_size": fixed("patch"),
                "qkv_bias": true,
            }))
        }
        other => Err(Error::RuleFile {
            file: other.to_string(),
            message: "no fixture config template for this architecture".into(),
        }),
    }
}

/// Writes a fixture as a HuggingFace model directory (config.json + model.safetensors).
pub fn write_dir(spec: &FixtureSpec, dir: &Path) -> Result<()> {
    let tensors = build(spec)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    let config = config(spec)?;
    let plans: Vec<TensorPlan> = tensors.iter().map(tensor_plan).collect();
    // Each tensor's bytes are handed to the writer, not copied (a benchmark model is GBs).
    let by_name: std::sync::Mutex<BTreeMap<String, Vec<u8>>> =
        std::sync::Mutex::new(tensors.into_iter().map(|t| (t.name, t.data)).collect());
    let form = crate::write::OutputForm::Directory {
        config: Some(config),
        extra_files: Vec::new(),
        shard_size: None,
    };
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    // Replaces an existing directory atomically, as `--force` does.
    let policy = crate::write::OutputPolicy::new(&[], true)?;
    crate::write::write_output(dir, &policy, &form, &plans, &metadata, &[], &|t, sink| {
        let data = by_name.lock().ok().and_then(|mut m| m.remove(&t.name));
        sink(&mut crate::execute::Block::from(data.unwrap_or_default()))
    })
}

fn tensor_plan(t: &FixtureTensor) -> TensorPlan {
    TensorPlan {
        name: t.name.clone(),
        dtype: t.dtype,
        shape: t.shape.clone(),
        sources: vec![t.name.clone()],
        depth: crate::plan::DepthOp::Single,
        axes: Vec::new(),
        interpolate_with: None,
        rule_axes: Vec::new(),
    }
}
