//! Validating a model before it runs: every weight against the hidden size and head layout,
//! so that a shape error names its role instead of failing half-way.

use ndarray::ArrayView1;

use super::{Embedding, ForwardError, Linear, Model, Norm, Positions};

pub(super) fn shape_error(
    role: impl Into<String>,
    actual: &[usize],
    expected: String,
) -> ForwardError {
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
pub(super) fn validate(model: &Model) -> Result<usize, ForwardError> {
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
