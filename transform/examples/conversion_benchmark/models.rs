//! The models the benchmark converts: synthetic BERT-Large (f32 and bf16) and a Llama-style
//! model of about 1.1B parameters (small ones with `--quick`), and each model's checkpoints, the
//! generated one and the conversions' outputs.

use std::path::{Path, PathBuf};

use anyhow::Result;
use safetensors::Dtype;
use vcycle_transform::Dims;
use vcycle_transform::fixture::{self, FixtureSpec};

pub struct Model {
    name: &'static str,
    spec: FixtureSpec,
    /// Sizes of the coalesced model: heads, kv heads, layers.
    small: (usize, usize, usize),
}

fn bert(layers: usize, hidden: usize, heads: usize, vocab: usize, dtype: Dtype) -> FixtureSpec {
    let mut spec = fixture::bert_mlm(7);
    spec.dims = Dims {
        layers,
        hidden,
        heads,
        kv_heads: heads,
        head_dim: hidden / heads,
        ffn: 4 * hidden,
        tied: true,
        fixed: [("vocab", vocab), ("positions", 512), ("token_types", 2)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
    };
    spec.dtype = dtype;
    spec
}

fn llama(
    layers: usize,
    hidden: usize,
    heads: usize,
    kv: usize,
    ffn: usize,
    vocab: usize,
) -> FixtureSpec {
    let mut spec = fixture::llama_lm(11, false);
    spec.dims = Dims {
        layers,
        hidden,
        heads,
        kv_heads: kv,
        head_dim: hidden / heads,
        ffn,
        tied: false,
        fixed: [("vocab", vocab), ("positions", 2048)]
            .map(|(k, v)| (k.to_string(), v))
            .into(),
    };
    spec.dtype = Dtype::BF16;
    spec
}

pub fn models(quick: bool) -> Vec<Model> {
    if quick {
        vec![
            Model {
                name: "bert-mini",
                spec: bert(4, 256, 4, 8192, Dtype::F32),
                small: (2, 2, 2),
            },
            Model {
                name: "bert-mini",
                spec: bert(4, 256, 4, 8192, Dtype::BF16),
                small: (2, 2, 2),
            },
            Model {
                name: "llama-mini",
                spec: llama(4, 512, 8, 2, 1408, 8192),
                small: (4, 1, 2),
            },
        ]
    } else {
        vec![
            Model {
                name: "bert-large",
                spec: bert(24, 1024, 16, 30522, Dtype::F32),
                small: (8, 8, 12),
            },
            Model {
                name: "bert-large",
                spec: bert(24, 1024, 16, 30522, Dtype::BF16),
                small: (8, 8, 12),
            },
            // TinyLlama-1.1B's sizes: 22 layers, hidden 2048, 32 query / 4 key-value heads.
            Model {
                name: "llama-1.1b",
                spec: llama(22, 2048, 32, 4, 5632, 32000),
                small: (16, 2, 11),
            },
        ]
    }
}

/// One model's checkpoints: the generated one and the conversions' outputs.
pub struct Checkpoints {
    pub name: &'static str,
    pub dtype: String,
    large: PathBuf,
    small: PathBuf,
    decoalesced: PathBuf,
    grown: PathBuf,
    /// The coalesced sizes: heads, kv heads, layers.
    pub shrink: [String; 3],
}

impl Checkpoints {
    /// Generates the model's checkpoint unless it is there.
    pub fn generate(root: &Path, model: &Model) -> Result<Self> {
        let dtype = format!("{:?}", model.spec.dtype).to_lowercase();
        let tag = format!("{}-{dtype}", model.name);
        let large = root.join(&tag);
        if !large.join("model.safetensors").exists() {
            eprintln!("generating {tag} ...");
            fixture::write_dir(&model.spec, &large)?;
        }
        let (heads, kv, layers) = model.small;
        Ok(Checkpoints {
            name: model.name,
            dtype,
            small: root.join(format!("{tag}.small")),
            decoalesced: root.join(format!("{tag}.decoalesced")),
            grown: root.join(format!("{tag}.grown")),
            large,
            shrink: [heads.to_string(), kv.to_string(), layers.to_string()],
        })
    }

    /// The inputs and the output of `op`.
    pub fn operation(&self, op: &str) -> (Vec<PathBuf>, &PathBuf) {
        match op {
            "coalesce" => (vec![self.large.clone()], &self.small),
            "decoalesce" => (vec![self.small.clone()], &self.decoalesced),
            _ => (vec![self.small.clone(), self.large.clone()], &self.grown),
        }
    }

    pub fn remove_outputs(&self) {
        for dir in [&self.small, &self.decoalesced, &self.grown] {
            std::fs::remove_dir_all(dir).ok();
        }
    }
}
