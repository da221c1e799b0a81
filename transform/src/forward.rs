//! Reference forward pass for the transformer families vcycle transforms (BERT, GPT-2, Llama,
//! ViT), in plain `ndarray` f32.
//!
//! The module knows no checkpoint tensor names: the caller maps a checkpoint onto [`Model`],
//! with every matrix already in PyTorch `nn.Linear` orientation (`[out, in]`). Its purpose is to
//! check transformed checkpoints numerically, so it favours fidelity to HuggingFace's eager f32
//! computation over speed; reductions (norms, softmax sums) accumulate in f64.
//!
//! This file runs the model; the model is defined in `model.rs`, checked in `validate.rs`, and
//! computed by `embed.rs`, `attention.rs` and `layers.rs`.

use ndarray::{Array2, ArrayD, IxDyn, s};

mod attention;
mod embed;
mod layers;
mod model;
mod validate;

use attention::{AttentionShape, RopeTable, attention};
use embed::embed;
use layers::{activate, apply_linear, apply_norm, mlp};
pub use model::{
    Activation, Attention, Block, Embedding, Head, Input, Linear, Mlp, Model, Norm, NormKind,
    PatchEmbedding, Placement, Positions,
};
use validate::validate;

/// Why a forward pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A weight or input does not have the shape its role requires.
    #[error("{role} has shape {actual:?}, expected {expected}")]
    Shape {
        /// What the tensor is, e.g. "block 2 attention q weight".
        role: String,
        /// Its shape.
        actual: Vec<usize>,
        /// The required shape; `..` stands for a free axis.
        expected: String,
    },
    /// A token id is negative or not below the vocabulary size.
    #[error(
        "input id {id} at batch {batch}, position {position} is outside the vocabulary of {vocab}"
    )]
    TokenOutOfVocabulary {
        /// Batch row of the offending id.
        batch: usize,
        /// Sequence position of the offending id.
        position: usize,
        /// The id.
        id: i64,
        /// Rows of the embedding table.
        vocab: usize,
    },
    /// The sequence needs more learned positions than the table has.
    #[error("sequence of {seq} tokens is longer than the {positions} learned positions")]
    SequenceTooLong {
        /// Tokens in the sequence (for images: patches plus CLS and extra tokens).
        seq: usize,
        /// Rows of the position table.
        positions: usize,
    },
    /// Image models add one position embedding per token, so the counts must agree exactly.
    #[error("image gives {seq} tokens but the position table has {positions} rows")]
    PatchPositions {
        /// CLS, extra tokens and patches.
        seq: usize,
        /// Rows of the position table.
        positions: usize,
    },
    /// Query heads must split evenly over key/value heads (GQA), and neither may be zero.
    #[error("{heads} query heads cannot be shared by {kv_heads} key/value heads")]
    Heads {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// The head dimension must be positive, and even for rotary positions.
    #[error("head_dim {head_dim} is not usable{reason}")]
    HeadDim {
        /// The configured head dimension.
        head_dim: usize,
        /// Extra explanation, possibly empty.
        reason: &'static str,
    },
    /// The image sides must be whole multiples of the patch size.
    #[error("image {height}x{width} is not divisible into {patch}x{patch} patches")]
    ImageSize {
        /// Image height in pixels.
        height: usize,
        /// Image width in pixels.
        width: usize,
        /// Patch side in pixels.
        patch: usize,
    },
    /// Token ids were given to an image model, or pixels to a language model.
    #[error("{input} input given to a model with {embedding} embedding")]
    InputKind {
        /// What the model embeds.
        embedding: &'static str,
        /// What was given.
        input: &'static str,
    },
    /// Batch or sequence is empty.
    #[error("input has shape {shape:?}; batch and sequence must be non-empty")]
    EmptyInput {
        /// The input shape.
        shape: Vec<usize>,
    },
}

/// Runs `model` on `input` and returns logits: `[batch, seq, vocab]`, or `[batch, labels]` when
/// the head pools the first token.
///
/// The whole model is validated first, so a shape error names its role instead of failing
/// half-way.
pub fn forward(model: &Model, input: Input) -> Result<ArrayD<f32>, ForwardError> {
    let hidden = validate(model)?;
    let (mut x, batch, seq) = embed(model, input, hidden)?;
    if let Some(norm) = &model.embedding_norm {
        x = apply_norm(norm, x.view());
    }
    let rope = match model.positions {
        Positions::Rope { theta } => Some(RopeTable::new(theta, model.head_dim, seq)),
        Positions::Learned(_) | Positions::None => None,
    };
    let shape = AttentionShape {
        batch,
        seq,
        heads: model.heads,
        kv_heads: model.kv_heads,
        head_dim: model.head_dim,
        causal: model.causal,
    };
    for block in &model.blocks {
        x = run_block(model, block, x, &shape, rope.as_ref());
    }
    let Some(head) = &model.head else {
        if let Some(norm) = &model.final_norm {
            x = apply_norm(norm, x.view());
        }
        return to_output(x, vec![batch, seq, hidden]);
    };
    // Every later step is per-token, so keeping only the pooled tokens now gives the same result.
    let second = match (&head.distillation, head.pool_first_token) {
        (Some(_), true) if seq < 2 => {
            return Err(ForwardError::EmptyInput {
                shape: vec![batch, seq],
            });
        }
        (Some(_), true) => Some(head_features(
            model,
            head,
            x.slice(s![1..;seq, ..]).to_owned(),
        )),
        _ => None,
    };
    if head.pool_first_token {
        x = x.slice(s![..;seq, ..]).to_owned();
    }
    let x = head_features(model, head, x);
    let mut logits = apply_linear(&head.output, x.view());
    if let (Some(distillation), Some(x1)) = (&head.distillation, second) {
        logits += &apply_linear(distillation, x1.view());
        logits.mapv_inplace(|v| v / 2.0);
    }
    let out = logits.ncols();
    let dims = if head.pool_first_token {
        vec![batch, out]
    } else {
        vec![batch, seq, out]
    };
    to_output(logits, dims)
}

/// Reshapes `[batch·seq, out]` rows into the output's dimensions.
fn to_output(rows: Array2<f32>, dims: Vec<usize>) -> Result<ArrayD<f32>, ForwardError> {
    rows.into_shape_with_order(IxDyn(&dims))
        .map_err(|_| ForwardError::Shape {
            role: "output".to_owned(),
            actual: dims.clone(),
            expected: "a contiguous [batch·seq, out] matrix".to_owned(),
        })
}

/// The final norm and the head's transform, per token.
fn head_features(model: &Model, head: &Head, mut x: Array2<f32>) -> Array2<f32> {
    if let Some(norm) = &model.final_norm {
        x = apply_norm(norm, x.view());
    }
    if let Some((linear, activation, norm)) = &head.transform {
        let mut t = apply_linear(linear, x.view());
        activate(&mut t, *activation);
        x = apply_norm(norm, t.view());
    }
    x
}

fn run_block(
    model: &Model,
    block: &Block,
    x: Array2<f32>,
    shape: &AttentionShape,
    rope: Option<&RopeTable>,
) -> Array2<f32> {
    match model.placement {
        Placement::PreNorm => {
            let h = apply_norm(&block.attn_norm, x.view());
            let x = x + attention(&block.attn, h.view(), shape, rope);
            let h = apply_norm(&block.mlp_norm, x.view());
            x + mlp(&block.mlp, model.activation, h.view())
        }
        Placement::PostNorm => {
            let a = attention(&block.attn, x.view(), shape, rope) + &x;
            let x = apply_norm(&block.attn_norm, a.view());
            let m = mlp(&block.mlp, model.activation, x.view()) + &x;
            apply_norm(&block.mlp_norm, m.view())
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array1;

    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf values from high-precision tables.
        let cases = [
            (0.0, 0.0),
            (1e-10, 1.1283791670955126e-10),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (1.5, 0.9661051464753108),
            (2.0, 0.9953222650189527),
            (3.0, 0.9999779095030014),
            (-0.7, -0.6778011938374184),
            (7.0, 1.0),
        ];
        for (x, want) in cases {
            let got = libm::erf(x);
            assert!((got - want).abs() < 1e-15, "erf({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn shape_errors_name_the_role() {
        let lin = |o: usize, i: usize| Linear {
            weight: Array2::zeros((o, i)),
            bias: None,
        };
        let norm = || Norm {
            kind: NormKind::RmsNorm,
            weight: Array1::ones(8),
            bias: None,
            eps: 1e-6,
        };
        let model = Model {
            embedding: Embedding::Tokens {
                table: Array2::zeros((5, 8)),
                token_type: None,
            },
            positions: Positions::Rope { theta: 1e4 },
            embedding_norm: None,
            blocks: vec![Block {
                attn_norm: norm(),
                attn: Attention {
                    q: lin(8, 8),
                    k: lin(4, 8),
                    v: lin(4, 8),
                    o: lin(8, 6),
                },
                mlp_norm: norm(),
                mlp: Mlp {
                    up: lin(16, 8),
                    gate: Some(lin(16, 8)),
                    down: lin(8, 16),
                },
            }],
            placement: Placement::PreNorm,
            activation: Activation::Silu,
            causal: true,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            final_norm: Some(norm()),
            head: Some(Head {
                transform: None,
                output: lin(5, 8),
                pool_first_token: false,
                distillation: None,
            }),
        };
        let ids = ndarray::array![[0i64, 1, 2]];
        let err = forward(&model, Input::Tokens(ids.view())).map(|_| ());
        let msg = err.map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("block 0 attention o weight has shape [8, 6], expected [8, 8]".to_owned())
        );

        let mut fixed = model.clone();
        fixed.blocks[0].attn.o = lin(8, 8);
        let out = forward(&fixed, Input::Tokens(ids.view())).map(|a| a.shape().to_vec());
        assert_eq!(out.map_err(|e| e.to_string()), Ok(vec![1, 3, 5]));

        let bad = ndarray::array![[0i64, 5]];
        let err = forward(&fixed, Input::Tokens(bad.view())).map(|_| ());
        assert!(matches!(
            err,
            Err(ForwardError::TokenOutOfVocabulary {
                id: 5,
                position: 1,
                ..
            })
        ));

        fixed.kv_heads = 3;
        let err = forward(&fixed, Input::Tokens(ids.view())).map(|_| ());
        assert!(matches!(
            err,
            Err(ForwardError::Heads {
                heads: 2,
                kv_heads: 3
            })
        ));
    }
}
