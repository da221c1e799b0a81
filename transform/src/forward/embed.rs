//! Embedding the input: token lookup or patch convolution, then learned positions.

use ndarray::{Array2, ArrayView4, s};

use super::validate::shape_error;
use super::{Embedding, ForwardError, Input, Model, PatchEmbedding, Positions};

/// Embeds the input into `[batch·seq, hidden]` (row `b·seq + t`), positions included.
pub(super) fn embed(
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
