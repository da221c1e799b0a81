//! Reference forward pass for the transformer families vcycle transforms (BERT, GPT-2, Llama,
//! ViT), in plain `ndarray` f32.
//!
//! The module knows no checkpoint tensor names: the caller maps a checkpoint onto [`Model`],
//! with every matrix already in PyTorch `nn.Linear` orientation (`[out, in]`). Its purpose is to
//! check transformed checkpoints numerically, so it favours fidelity to HuggingFace's eager f32
//! computation over speed; reductions (norms, softmax sums) accumulate in f64.

use ndarray::{Array1, Array2, Array4, ArrayD, ArrayView1, ArrayView2, ArrayView4, Axis, IxDyn, s};

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

/// An affine map `y = x·Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`, PyTorch `nn.Linear` orientation.
    pub weight: Array2<f32>,
    /// `[out]`.
    pub bias: Option<Array1<f32>>,
}

/// Which normalisation a [`Norm`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `y = (x − mean) / sqrt(var + eps) · w + b`, biased variance.
    LayerNorm,
    /// `y = x / sqrt(mean(x²) + eps) · w` (+ b if given).
    RmsNorm,
}

/// A per-token normalisation over the hidden axis.
#[derive(Debug, Clone)]
pub struct Norm {
    /// LayerNorm or RMSNorm.
    pub kind: NormKind,
    /// Gain, `[hidden]`.
    pub weight: Array1<f32>,
    /// Shift, `[hidden]`.
    pub bias: Option<Array1<f32>>,
    /// Added to the variance (or mean square) before the square root.
    pub eps: f32,
}

/// Element-wise nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x/2 · (1 + erf(x/√2))` (HF `gelu`).
    GeluErf,
    /// `x/2 · (1 + tanh(√(2/π) · (x + 0.044715x³)))` (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · σ(x)` (HF `silu`).
    Silu,
}

/// Where a block normalises relative to its residual connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `x = x + attn(attn_norm(x)); x = x + mlp(mlp_norm(x))` (GPT-2, Llama, ViT).
    PreNorm,
    /// `x = attn_norm(x + attn(x)); x = mlp_norm(x + mlp(x))` (BERT).
    PostNorm,
}

/// Multi-head (optionally grouped-query) self-attention projections.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[heads·head_dim, hidden]`.
    pub q: Linear,
    /// `[kv_heads·head_dim, hidden]`.
    pub k: Linear,
    /// `[kv_heads·head_dim, hidden]`.
    pub v: Linear,
    /// `[hidden, heads·head_dim]`.
    pub o: Linear,
}

/// Feed-forward network: `down(act(up(x)))`, or with a gate `down(act(gate(x)) ⊙ up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[ffn, hidden]`.
    pub up: Linear,
    /// `[ffn, hidden]`; present for SwiGLU-style MLPs.
    pub gate: Option<Linear>,
    /// `[hidden, ffn]`.
    pub down: Linear,
}

/// One transformer layer; see [`Placement`] for how the parts are wired.
#[derive(Debug, Clone)]
pub struct Block {
    /// Norm around the attention sub-layer.
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Norm around the MLP sub-layer.
    pub mlp_norm: Norm,
    /// Feed-forward network.
    pub mlp: Mlp,
}

/// How token positions enter the model.
#[derive(Debug, Clone)]
pub enum Positions {
    /// `[positions, hidden]`, row `t` added to token `t` after embedding.
    Learned(Array2<f32>),
    /// Rotary embedding on q and k, HF `rotate_half` convention:
    /// `q' = q·cos(tθᵢ) + rotate_half(q)·sin(tθᵢ)`, `θᵢ = theta^(−2i/head_dim)`,
    /// frequency `i` shared by dimensions `i` and `i + head_dim/2`.
    Rope {
        /// Base of the inverse frequencies (HF `rope_theta`).
        theta: f32,
    },
    /// No positional information.
    None,
}

/// Model input.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Token ids, `[batch, seq]`.
    Tokens(ArrayView2<'a, i64>),
    /// Images, `[batch, channels, height, width]`.
    Pixels(ArrayView4<'a, f32>),
}

/// ViT-style embedding: a stride-`patch` convolution, with learned tokens prepended in the
/// order CLS, then `extra_tokens`.
#[derive(Debug, Clone)]
pub struct PatchEmbedding {
    /// Convolution kernel `[hidden, channels, patch, patch]`.
    pub weight: Array4<f32>,
    /// `[hidden]`.
    pub bias: Array1<f32>,
    /// Patch side (kernel size and stride).
    pub patch: usize,
    /// `[hidden]`.
    pub cls_token: Array1<f32>,
    /// Tokens after CLS and before the patches, each `[hidden]` (DeiT distillation token).
    pub extra_tokens: Vec<Array1<f32>>,
}

/// How inputs become hidden states.
#[derive(Debug, Clone)]
pub enum Embedding {
    /// Table lookup, plus an optional constant token-type row.
    Tokens {
        /// `[vocab, hidden]`.
        table: Array2<f32>,
        /// `[hidden]`, row 0 of a token-type table, added to every position.
        token_type: Option<Array1<f32>>,
    },
    /// Image patches.
    Patches(PatchEmbedding),
}

/// Output head, applied after the final norm.
#[derive(Debug, Clone)]
pub struct Head {
    /// `norm(act(linear(x)))` before the output projection (BERT MLM transform).
    pub transform: Option<(Linear, Activation, Norm)>,
    /// `[vocab or labels, hidden]`.
    pub output: Linear,
    /// Classify from token 0 only (ViT), giving `[batch, labels]`.
    pub pool_first_token: bool,
    /// `[labels, hidden]`, a second classifier on token 1 (DeiT's distillation head); the logits
    /// are then `(output(x₀) + distillation(x₁)) / 2`. Needs `pool_first_token`.
    pub distillation: Option<Linear>,
}

/// A complete model with already-oriented weights.
#[derive(Debug, Clone)]
pub struct Model {
    /// Input embedding.
    pub embedding: Embedding,
    /// Positional scheme.
    pub positions: Positions,
    /// Norm right after the embeddings (BERT).
    pub embedding_norm: Option<Norm>,
    /// Transformer layers.
    pub blocks: Vec<Block>,
    /// Norm placement inside blocks.
    pub placement: Placement,
    /// MLP activation (applied to `gate` when present, else to `up`).
    pub activation: Activation,
    /// Mask attention to later positions.
    pub causal: bool,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (equal to `heads` without GQA).
    pub kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Norm after the last block.
    pub final_norm: Option<Norm>,
    /// Output head.
    /// Output head; `None` for a base model, whose output is the final hidden states.
    pub head: Option<Head>,
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

/// Batch geometry shared by every attention layer.
struct AttentionShape {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    causal: bool,
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

// ---------------------------------------------------------------------------------------------
// Validation

fn shape_error(role: impl Into<String>, actual: &[usize], expected: String) -> ForwardError {
    ForwardError::Shape {
        role: role.into(),
        actual: actual.to_vec(),
        expected,
    }
}

fn dim(n: Option<usize>) -> String {
    n.map_or_else(|| "..".to_owned(), |n| n.to_string())
}

/// Checks a linear layer against `[out, inp]`, where `None` leaves an axis free, and returns
/// its actual `(out, in)`.
fn check_linear(
    role: &str,
    linear: &Linear,
    out: Option<usize>,
    inp: Option<usize>,
) -> Result<(usize, usize), ForwardError> {
    let (o, i) = linear.weight.dim();
    if out.is_some_and(|n| n != o) || inp.is_some_and(|n| n != i) {
        return Err(shape_error(
            format!("{role} weight"),
            &[o, i],
            format!("[{}, {}]", dim(out), dim(inp)),
        ));
    }
    if let Some(bias) = &linear.bias
        && bias.len() != o
    {
        return Err(shape_error(
            format!("{role} bias"),
            bias.shape(),
            format!("[{o}]"),
        ));
    }
    Ok((o, i))
}

fn check_vector(role: &str, v: ArrayView1<f32>, hidden: usize) -> Result<(), ForwardError> {
    if v.len() == hidden {
        Ok(())
    } else {
        Err(shape_error(role, v.shape(), format!("[{hidden}]")))
    }
}

fn check_norm(role: &str, norm: &Norm, hidden: usize) -> Result<(), ForwardError> {
    check_vector(&format!("{role} weight"), norm.weight.view(), hidden)?;
    if let Some(bias) = &norm.bias {
        check_vector(&format!("{role} bias"), bias.view(), hidden)?;
    }
    Ok(())
}

/// Validates every weight against the model's hidden size and head layout; returns `hidden`.
fn validate(model: &Model) -> Result<usize, ForwardError> {
    let (heads, kv_heads, head_dim) = (model.heads, model.kv_heads, model.head_dim);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(ForwardError::Heads { heads, kv_heads });
    }
    if head_dim == 0 {
        return Err(ForwardError::HeadDim {
            head_dim,
            reason: "",
        });
    }
    if matches!(model.positions, Positions::Rope { .. }) && head_dim % 2 != 0 {
        return Err(ForwardError::HeadDim {
            head_dim,
            reason: ": rotary positions need an even head_dim",
        });
    }
    let hidden = match &model.embedding {
        Embedding::Tokens { table, token_type } => {
            let hidden = table.ncols();
            if let Some(row) = token_type {
                check_vector("token type embedding", row.view(), hidden)?;
            }
            hidden
        }
        Embedding::Patches(p) => {
            let hidden = p.weight.shape()[0];
            let ws = p.weight.shape();
            if p.patch == 0 || ws[2] != p.patch || ws[3] != p.patch {
                return Err(shape_error(
                    "patch embedding weight",
                    ws,
                    format!("[.., .., {0}, {0}] with patch > 0", p.patch),
                ));
            }
            check_vector("patch embedding bias", p.bias.view(), hidden)?;
            check_vector("cls token", p.cls_token.view(), hidden)?;
            for (i, t) in p.extra_tokens.iter().enumerate() {
                check_vector(&format!("extra token {i}"), t.view(), hidden)?;
            }
            hidden
        }
    };
    if let Positions::Learned(table) = &model.positions
        && table.ncols() != hidden
    {
        return Err(shape_error(
            "position embedding",
            table.shape(),
            format!("[.., {hidden}]"),
        ));
    }
    if let Some(norm) = &model.embedding_norm {
        check_norm("embedding norm", norm, hidden)?;
    }
    let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
    for (i, block) in model.blocks.iter().enumerate() {
        let role = |part: &str| format!("block {i} {part}");
        check_norm(&role("attention norm"), &block.attn_norm, hidden)?;
        check_norm(&role("mlp norm"), &block.mlp_norm, hidden)?;
        let a = &block.attn;
        check_linear(&role("attention q"), &a.q, Some(q_out), Some(hidden))?;
        check_linear(&role("attention k"), &a.k, Some(kv_out), Some(hidden))?;
        check_linear(&role("attention v"), &a.v, Some(kv_out), Some(hidden))?;
        check_linear(&role("attention o"), &a.o, Some(hidden), Some(q_out))?;
        let (ffn, _) = check_linear(&role("mlp up"), &block.mlp.up, None, Some(hidden))?;
        if let Some(gate) = &block.mlp.gate {
            check_linear(&role("mlp gate"), gate, Some(ffn), Some(hidden))?;
        }
        check_linear(&role("mlp down"), &block.mlp.down, Some(hidden), Some(ffn))?;
    }
    if let Some(norm) = &model.final_norm {
        check_norm("final norm", norm, hidden)?;
    }
    let Some(head) = &model.head else {
        return Ok(hidden);
    };
    if let Some((linear, _, norm)) = &head.transform {
        check_linear("head transform", linear, Some(hidden), Some(hidden))?;
        check_norm("head transform norm", norm, hidden)?;
    }
    let (labels, _) = check_linear("head output", &head.output, None, Some(hidden))?;
    if let Some(distillation) = &head.distillation {
        if !head.pool_first_token {
            return Err(shape_error(
                "distillation head (it needs first-token pooling)",
                distillation.weight.shape(),
                format!("[{labels}, {hidden}]"),
            ));
        }
        check_linear(
            "distillation head",
            distillation,
            Some(labels),
            Some(hidden),
        )?;
    }
    Ok(hidden)
}

// ---------------------------------------------------------------------------------------------
// Embedding

/// Embeds the input into `[batch·seq, hidden]` (row `b·seq + t`), positions included.
fn embed(
    model: &Model,
    input: Input,
    hidden: usize,
) -> Result<(Array2<f32>, usize, usize), ForwardError> {
    let (mut x, batch, seq) = match (&model.embedding, input) {
        (Embedding::Tokens { table, token_type }, Input::Tokens(ids)) => {
            let (batch, seq) = ids.dim();
            if batch == 0 || seq == 0 {
                return Err(ForwardError::EmptyInput {
                    shape: ids.shape().to_vec(),
                });
            }
            let vocab = table.nrows();
            let mut x = Array2::<f32>::zeros((batch * seq, hidden));
            for ((b, t), &id) in ids.indexed_iter() {
                let row = usize::try_from(id).ok().filter(|&r| r < vocab).ok_or(
                    ForwardError::TokenOutOfVocabulary {
                        batch: b,
                        position: t,
                        id,
                        vocab,
                    },
                )?;
                x.row_mut(b * seq + t).assign(&table.row(row));
            }
            if let Some(tt) = token_type {
                x += tt;
            }
            (x, batch, seq)
        }
        (Embedding::Patches(p), Input::Pixels(pixels)) => embed_patches(p, pixels, hidden)?,
        (Embedding::Tokens { .. }, Input::Pixels(_)) => {
            return Err(ForwardError::InputKind {
                embedding: "token",
                input: "pixel",
            });
        }
        (Embedding::Patches(_), Input::Tokens(_)) => {
            return Err(ForwardError::InputKind {
                embedding: "patch",
                input: "token",
            });
        }
    };
    if let Positions::Learned(table) = &model.positions {
        let positions = table.nrows();
        if matches!(model.embedding, Embedding::Patches(_)) && positions != seq {
            return Err(ForwardError::PatchPositions { seq, positions });
        }
        if seq > positions {
            return Err(ForwardError::SequenceTooLong { seq, positions });
        }
        let used = table.slice(s![..seq, ..]);
        for b in 0..batch {
            let mut rows = x.slice_mut(s![b * seq..(b + 1) * seq, ..]);
            rows += &used;
        }
    }
    Ok((x, batch, seq))
}

/// Convolution with kernel = stride = `patch`, as one matrix product over flattened patches.
/// Patches are ordered row-major over the patch grid, like `conv(x).flatten(2)`.
fn embed_patches(
    p: &PatchEmbedding,
    pixels: ArrayView4<f32>,
    hidden: usize,
) -> Result<(Array2<f32>, usize, usize), ForwardError> {
    let (batch, channels, height, width) = pixels.dim();
    let ws = p.weight.shape();
    if ws[1] != channels {
        return Err(shape_error(
            "patch embedding weight",
            ws,
            format!(
                "[.., {channels}, {0}, {0}] for {channels}-channel pixels",
                p.patch
            ),
        ));
    }
    let patch = p.patch;
    if batch == 0 || height == 0 || width == 0 {
        return Err(ForwardError::EmptyInput {
            shape: pixels.shape().to_vec(),
        });
    }
    if height % patch != 0 || width % patch != 0 {
        return Err(ForwardError::ImageSize {
            height,
            width,
            patch,
        });
    }
    let (gh, gw) = (height / patch, width / patch);
    let n_patches = gh * gw;
    let k = channels * patch * patch;
    // Contiguous copy, so the reshape below cannot fail on a strided kernel.
    let kernel =
        Array2::from_shape_vec((hidden, k), p.weight.iter().copied().collect()).map_err(|_| {
            shape_error(
                "patch embedding weight",
                ws,
                format!("[{hidden}, {channels}, {patch}, {patch}]"),
            )
        })?;
    let mut cols = Array2::<f32>::zeros((batch * n_patches, k));
    for b in 0..batch {
        for i in 0..gh {
            for j in 0..gw {
                let window = pixels.slice(s![
                    b,
                    ..,
                    i * patch..(i + 1) * patch,
                    j * patch..(j + 1) * patch
                ]);
                let mut row = cols.row_mut(b * n_patches + i * gw + j);
                for (dst, &src) in row.iter_mut().zip(window.iter()) {
                    *dst = src;
                }
            }
        }
    }
    let patches = cols.dot(&kernel.t()) + &p.bias;
    let prefix = 1 + p.extra_tokens.len();
    let seq = prefix + n_patches;
    let mut x = Array2::<f32>::zeros((batch * seq, hidden));
    for b in 0..batch {
        x.row_mut(b * seq).assign(&p.cls_token);
        for (e, token) in p.extra_tokens.iter().enumerate() {
            x.row_mut(b * seq + 1 + e).assign(token);
        }
        x.slice_mut(s![b * seq + prefix..(b + 1) * seq, ..])
            .assign(&patches.slice(s![b * n_patches..(b + 1) * n_patches, ..]));
    }
    Ok((x, batch, seq))
}

// ---------------------------------------------------------------------------------------------
// Layers

/// `x·Wᵀ + b` over rows of `x`.
fn apply_linear(linear: &Linear, x: ArrayView2<f32>) -> Array2<f32> {
    let y = x.dot(&linear.weight.t());
    match &linear.bias {
        Some(b) => y + b,
        None => y,
    }
}

/// Normalises each row; statistics accumulate in f64 so that tiny `eps` (1e-12) and large
/// hidden sizes do not lose precision.
fn apply_norm(norm: &Norm, x: ArrayView2<f32>) -> Array2<f32> {
    let mut y = x.to_owned();
    let n = x.ncols() as f64;
    let eps = f64::from(norm.eps);
    for mut row in y.rows_mut() {
        let (mean, scale) = match norm.kind {
            NormKind::LayerNorm => {
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                let var = row
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / n;
                (mean, 1.0 / (var + eps).sqrt())
            }
            NormKind::RmsNorm => {
                let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n;
                (0.0, 1.0 / (ms + eps).sqrt())
            }
        };
        for (v, &w) in row.iter_mut().zip(norm.weight.iter()) {
            // Rounded to f32 before the gain, as HF's RMSNorm does.
            *v = ((f64::from(*v) - mean) * scale) as f32 * w;
        }
        if let Some(bias) = &norm.bias {
            row += bias;
        }
    }
    y
}

fn activate(x: &mut Array2<f32>, activation: Activation) {
    x.mapv_inplace(|v| activation_value(activation, v));
}

/// One activation value, evaluated in f64 and rounded once.
fn activation_value(activation: Activation, v: f32) -> f32 {
    let x = f64::from(v);
    let y = match activation {
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Silu => x / (1.0 + (-x).exp()),
    };
    y as f32
}

/// `down(act(up(x)))`, or `down(act(gate(x)) ⊙ up(x))` when gated.
fn mlp(mlp: &Mlp, activation: Activation, x: ArrayView2<f32>) -> Array2<f32> {
    let mut up = apply_linear(&mlp.up, x);
    match &mlp.gate {
        Some(gate) => {
            let mut g = apply_linear(gate, x);
            activate(&mut g, activation);
            up *= &g;
        }
        None => activate(&mut up, activation),
    }
    apply_linear(&mlp.down, up.view())
}

/// Rotary cos/sin tables, `[seq, head_dim/2]`.
struct RopeTable {
    cos: Array2<f32>,
    sin: Array2<f32>,
}

impl RopeTable {
    /// Follows HF's f32 arithmetic: `inv_freq = 1 / theta^(2i/d)` and the angle `t·inv_freq`
    /// are rounded to f32 before the (exactly evaluated) cos and sin, since at long positions
    /// that rounding moves the angle by more than our tolerance.
    fn new(theta: f32, head_dim: usize, seq: usize) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (f64::from(theta).powf(f64::from(exponent)) as f32)
            })
            .collect();
        let angle = |t: usize, i: usize| f64::from(t as f32 * inv_freq[i]);
        Self {
            cos: Array2::from_shape_fn((seq, half), |(t, i)| angle(t, i).cos() as f32),
            sin: Array2::from_shape_fn((seq, half), |(t, i)| angle(t, i).sin() as f32),
        }
    }

    /// Rotates every head of `x` (`[batch·seq, n_heads·head_dim]`) in place:
    /// `(a, b) ← (a·cos − b·sin, b·cos + a·sin)` for the pair `(i, i + head_dim/2)`.
    fn apply(&self, x: &mut Array2<f32>, seq: usize, head_dim: usize) {
        let half = head_dim / 2;
        for (r, mut row) in x.rows_mut().into_iter().enumerate() {
            let t = r % seq;
            let (cos, sin) = (self.cos.row(t), self.sin.row(t));
            for mut head in row.exact_chunks_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}

/// Self-attention: per head `softmax(q·kᵀ / √head_dim + mask)·v`, then the output projection.
/// Query head `h` reads key/value head `h / (heads / kv_heads)`.
fn attention(
    attn: &Attention,
    x: ArrayView2<f32>,
    shape: &AttentionShape,
    rope: Option<&RopeTable>,
) -> Array2<f32> {
    let &AttentionShape {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
        causal,
    } = shape;
    let mut q = apply_linear(&attn.q, x);
    let mut k = apply_linear(&attn.k, x);
    let v = apply_linear(&attn.v, x);
    if let Some(rope) = rope {
        rope.apply(&mut q, seq, head_dim);
        rope.apply(&mut k, seq, head_dim);
    }
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut context = Array2::<f32>::zeros((batch * seq, heads * head_dim));
    for b in 0..batch {
        let rows = b * seq..(b + 1) * seq;
        for h in 0..heads {
            let kv = h / group;
            let qh = q.slice(s![rows.clone(), h * head_dim..(h + 1) * head_dim]);
            let kh = k.slice(s![rows.clone(), kv * head_dim..(kv + 1) * head_dim]);
            let vh = v.slice(s![rows.clone(), kv * head_dim..(kv + 1) * head_dim]);
            let mut scores = qh.dot(&kh.t());
            scores.mapv_inplace(|s| s * scale);
            softmax_rows(&mut scores, causal);
            context
                .slice_mut(s![rows.clone(), h * head_dim..(h + 1) * head_dim])
                .assign(&scores.dot(&vh));
        }
    }
    apply_linear(&attn.o, context.view())
}

/// Row-wise softmax with the maximum subtracted; with `causal`, row `i` keeps columns `0..=i`
/// and the rest become exactly zero.
fn softmax_rows(scores: &mut Array2<f32>, causal: bool) {
    for (i, mut row) in scores.axis_iter_mut(Axis(0)).enumerate() {
        let visible = if causal { i + 1 } else { row.len() };
        let max = row
            .iter()
            .take(visible)
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0f64;
        for (j, v) in row.iter_mut().enumerate() {
            if j < visible {
                *v = (*v - max).exp();
                sum += f64::from(*v);
            } else {
                *v = 0.0;
            }
        }
        let inv = (1.0 / sum) as f32;
        row.mapv_inplace(|v| v * inv);
    }
}

#[cfg(test)]
mod tests {
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
