//! Matches [`forward`](super::forward) against logits computed by HuggingFace transformers.
//!
//! The reference folders (see their README) hold tiny random checkpoints in HF layout and
//! `reference.safetensors` with the input and HF's logits. The loaders below are the only place
//! that knows HF tensor names for Llama and ViT until their rule files exist; BERT and GPT-2
//! are loaded through their rules in `verify`.

use super::*;
use ndarray::{Array, Ix2};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// HF computes in f32 too, so only summation order separates us; 1e-4 leaves ample headroom
/// over the ~1e-6 differences that produces.
const TOLERANCE: f32 = 1e-4;

fn reference_dir(name: &str) -> TestResult<PathBuf> {
    Ok(crate::test_support::hf_reference_dir(name)?)
}

/// All tensors of one safetensors file, widened to f32 (ids kept as i64).
struct Tensors {
    floats: HashMap<String, ArrayD<f32>>,
    ints: HashMap<String, ArrayD<i64>>,
}

impl Tensors {
    fn load(path: &std::path::Path) -> TestResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)?;
        let mut floats = HashMap::new();
        let mut ints = HashMap::new();
        for (name, view) in st.tensors() {
            let shape = IxDyn(view.shape());
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => {
                    let v = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    floats.insert(name, Array::from_shape_vec(shape, v)?);
                }
                Dtype::F16 => {
                    let v = data
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect();
                    floats.insert(name, Array::from_shape_vec(shape, v)?);
                }
                Dtype::BF16 => {
                    let v = data
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect();
                    floats.insert(name, Array::from_shape_vec(shape, v)?);
                }
                Dtype::I64 => {
                    let v = data
                        .chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect();
                    ints.insert(name, Array::from_shape_vec(shape, v)?);
                }
                other => return Err(format!("{name}: unsupported dtype {other:?}").into()),
            }
        }
        Ok(Self { floats, ints })
    }

    fn get(&self, name: &str) -> TestResult<ArrayD<f32>> {
        self.floats
            .get(name)
            .cloned()
            .ok_or_else(|| format!("tensor {name} not found").into())
    }

    fn has(&self, name: &str) -> bool {
        self.floats.contains_key(name)
    }

    fn mat(&self, name: &str) -> TestResult<Array2<f32>> {
        Ok(self.get(name)?.into_dimensionality::<Ix2>()?)
    }

    fn vector(&self, name: &str) -> TestResult<Array1<f32>> {
        let t = self.get(name)?;
        let n = t.len();
        // Flattening also accepts HF's [1, 1, hidden] parameters such as ViT's cls_token.
        Ok(t.into_shape_with_order(n)?)
    }

    /// `nn.Linear` at `prefix`: `[out, in]` weight and optional bias.
    fn linear(&self, prefix: &str) -> TestResult<Linear> {
        let bias = format!("{prefix}.bias");
        Ok(Linear {
            weight: self.mat(&format!("{prefix}.weight"))?,
            bias: if self.has(&bias) {
                Some(self.vector(&bias)?)
            } else {
                None
            },
        })
    }

    fn norm(&self, prefix: &str, kind: NormKind, eps: f32) -> TestResult<Norm> {
        let bias = format!("{prefix}.bias");
        Ok(Norm {
            kind,
            weight: self.vector(&format!("{prefix}.weight"))?,
            bias: if self.has(&bias) {
                Some(self.vector(&bias)?)
            } else {
                None
            },
            eps,
        })
    }
}

struct Config(serde_json::Value);

impl Config {
    fn load(dir: &std::path::Path) -> TestResult<Self> {
        let text = std::fs::read_to_string(dir.join("config.json"))?;
        Ok(Self(serde_json::from_str(&text)?))
    }

    fn usize(&self, key: &str) -> TestResult<usize> {
        let n = self.0[key]
            .as_u64()
            .ok_or_else(|| format!("config key {key} is not an integer"))?;
        Ok(usize::try_from(n)?)
    }

    fn f32(&self, key: &str) -> TestResult<f32> {
        let x = self.0[key]
            .as_f64()
            .ok_or_else(|| format!("config key {key} is not a number"))?;
        Ok(x as f32)
    }

    fn bool(&self, key: &str) -> bool {
        self.0[key].as_bool().unwrap_or(false)
    }

    /// Newer configs nest the rotary base under `rope_parameters`; older ones keep it at the top.
    fn rope_theta(&self) -> TestResult<f32> {
        self.0["rope_parameters"]["rope_theta"]
            .as_f64()
            .or_else(|| self.0["rope_theta"].as_f64())
            .map(|t| t as f32)
            .ok_or_else(|| "config has no rope_theta".into())
    }
}

fn llama(w: &Tensors, c: &Config) -> TestResult<Model> {
    let eps = c.f32("rms_norm_eps")?;
    let heads = c.usize("num_attention_heads")?;
    let rms = |p: &str| w.norm(p, NormKind::RmsNorm, eps);
    let blocks = (0..c.usize("num_hidden_layers")?)
        .map(|i| {
            let p = format!("model.layers.{i}");
            Ok(Block {
                attn_norm: rms(&format!("{p}.input_layernorm"))?,
                attn: Attention {
                    q: w.linear(&format!("{p}.self_attn.q_proj"))?,
                    k: w.linear(&format!("{p}.self_attn.k_proj"))?,
                    v: w.linear(&format!("{p}.self_attn.v_proj"))?,
                    o: w.linear(&format!("{p}.self_attn.o_proj"))?,
                },
                mlp_norm: rms(&format!("{p}.post_attention_layernorm"))?,
                mlp: Mlp {
                    up: w.linear(&format!("{p}.mlp.up_proj"))?,
                    gate: Some(w.linear(&format!("{p}.mlp.gate_proj"))?),
                    down: w.linear(&format!("{p}.mlp.down_proj"))?,
                },
            })
        })
        .collect::<TestResult<Vec<_>>>()?;
    let table = w.mat("model.embed_tokens.weight")?;
    let output = if c.bool("tie_word_embeddings") {
        Linear {
            weight: table.clone(),
            bias: None,
        }
    } else {
        w.linear("lm_head")?
    };
    Ok(Model {
        embedding: Embedding::Tokens {
            table,
            token_type: None,
        },
        positions: Positions::Rope {
            theta: c.rope_theta()?,
        },
        embedding_norm: None,
        blocks,
        placement: Placement::PreNorm,
        activation: Activation::Silu,
        causal: true,
        heads,
        kv_heads: c.usize("num_key_value_heads")?,
        head_dim: c.usize("head_dim")?,
        final_norm: Some(rms("model.norm")?),
        head: Head {
            transform: None,
            output,
            pool_first_token: false,
        },
    })
}

fn vit(w: &Tensors, c: &Config) -> TestResult<Model> {
    let eps = c.f32("layer_norm_eps")?;
    let heads = c.usize("num_attention_heads")?;
    let hidden = c.usize("hidden_size")?;
    let ln = |p: &str| w.norm(p, NormKind::LayerNorm, eps);
    let blocks = (0..c.usize("num_hidden_layers")?)
        .map(|i| {
            let p = format!("vit.encoder.layer.{i}");
            Ok(Block {
                attn_norm: ln(&format!("{p}.layernorm_before"))?,
                attn: Attention {
                    q: w.linear(&format!("{p}.attention.attention.query"))?,
                    k: w.linear(&format!("{p}.attention.attention.key"))?,
                    v: w.linear(&format!("{p}.attention.attention.value"))?,
                    o: w.linear(&format!("{p}.attention.output.dense"))?,
                },
                mlp_norm: ln(&format!("{p}.layernorm_after"))?,
                mlp: Mlp {
                    up: w.linear(&format!("{p}.intermediate.dense"))?,
                    gate: None,
                    down: w.linear(&format!("{p}.output.dense"))?,
                },
            })
        })
        .collect::<TestResult<Vec<_>>>()?;
    let positions = w.get("vit.embeddings.position_embeddings")?;
    let rows = positions.len() / hidden;
    Ok(Model {
        embedding: Embedding::Patches(PatchEmbedding {
            weight: w
                .get("vit.embeddings.patch_embeddings.projection.weight")?
                .into_dimensionality()?,
            bias: w.vector("vit.embeddings.patch_embeddings.projection.bias")?,
            patch: c.usize("patch_size")?,
            cls_token: w.vector("vit.embeddings.cls_token")?,
            extra_tokens: Vec::new(),
        }),
        positions: Positions::Learned(positions.into_shape_with_order((rows, hidden))?),
        embedding_norm: None,
        blocks,
        placement: Placement::PreNorm,
        activation: Activation::GeluErf,
        causal: false,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        final_norm: Some(ln("vit.layernorm")?),
        head: Head {
            transform: None,
            output: w.linear("classifier")?,
            pool_first_token: true,
        },
    })
}

/// Builds the model for reference folder `name`, runs it and returns the max abs difference.
fn check(name: &str, build: fn(&Tensors, &Config) -> TestResult<Model>) -> TestResult<f32> {
    let dir = reference_dir(name)?;
    let weights = Tensors::load(&dir.join("model.safetensors"))?;
    let reference = Tensors::load(&dir.join("reference.safetensors"))?;
    let model = build(&weights, &Config::load(&dir)?)?;
    let logits = if let Some(ids) = reference.ints.get("input_ids") {
        let ids = ids.view().into_dimensionality::<Ix2>()?;
        forward(&model, Input::Tokens(ids))?
    } else {
        let pixels = reference.get("pixel_values")?;
        forward(&model, Input::Pixels(pixels.view().into_dimensionality()?))?
    };
    let want = reference.get("logits")?;
    if logits.shape() != want.shape() {
        return Err(format!(
            "{name}: logits {:?}, want {:?}",
            logits.shape(),
            want.shape()
        )
        .into());
    }
    let diff = logits
        .iter()
        .zip(want.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("{name}: max |logits - HF| = {diff:.3e}");
    if diff.is_nan() || diff > TOLERANCE {
        return Err(format!("{name}: max abs diff {diff:e} exceeds {TOLERANCE:e}").into());
    }
    Ok(diff)
}

#[test]
fn llama_matches_hf() -> TestResult {
    check("llama", llama).map(drop)
}

#[test]
fn llama_tied_matches_hf() -> TestResult {
    check("llama-tied", llama).map(drop)
}

#[test]
fn vit_matches_hf() -> TestResult {
    check("vit", vit).map(drop)
}

/// A transposed (non-standard-layout) view must give the same logits as a contiguous one.
#[test]
fn strided_input_is_accepted() -> TestResult {
    let dir = reference_dir("llama")?;
    let weights = Tensors::load(&dir.join("model.safetensors"))?;
    let reference = Tensors::load(&dir.join("reference.safetensors"))?;
    let model = llama(&weights, &Config::load(&dir)?)?;
    let ids = reference
        .ints
        .get("input_ids")
        .ok_or("input_ids missing")?
        .view()
        .into_dimensionality::<Ix2>()?;
    let transposed: Array2<i64> = ids.t().to_owned();
    let a = forward(&model, Input::Tokens(ids))?;
    let b = forward(&model, Input::Tokens(transposed.t()))?;
    assert_eq!(a, b);
    Ok(())
}
