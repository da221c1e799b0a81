//! Multi-head attention as the bundled models share it: heads split from and merged back into
//! the projections' last axis, around Burn's fused attention.

use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// `[batch, seq, heads · head_dim]` → `[batch, heads, seq, head_dim]`.
pub(super) fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads.max(1)])
        .swap_dims(1, 2)
}

/// Scaled dot-product attention of split heads (`[batch, heads, seq, head_dim]`), merged back
/// into `[batch, seq, heads · head_dim]`.
pub(super) fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, is_causal: bool) -> Tensor<3> {
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal,
    };
    let out = attention(q, k, v, None, None, options);
    let [batch, heads, seq, head_dim] = out.dims();
    out.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}
