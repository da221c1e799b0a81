//! Self-attention, with rotary positions where the model has them.

use ndarray::{Array2, ArrayView2, Axis, s};

use super::Attention;
use super::layers::apply_linear;

/// Batch geometry shared by every attention layer.
pub(super) struct AttentionShape {
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) causal: bool,
}

/// Rotary cos/sin tables, `[seq, head_dim/2]`.
pub(super) struct RopeTable {
    cos: Array2<f32>,
    sin: Array2<f32>,
}

impl RopeTable {
    /// Follows HF's f32 arithmetic: `inv_freq = 1 / theta^(2i/d)` and the angle `t·inv_freq`
    /// are rounded to f32 before the (exactly evaluated) cos and sin, since at long positions
    /// that rounding moves the angle by more than our tolerance.
    pub(super) fn new(theta: f32, head_dim: usize, seq: usize) -> Self {
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
pub(super) fn attention(
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
