//! Loading a checkpoint's weights into a [`forward::Model`] through its rules: roles and axis
//! directions, never tensor names.

use ndarray::{Array1, Array2, ArrayD, Axis as NdAxis, IxDyn, s};
use serde_json::Value;

use super::input::InputKind;
use crate::anatomy::{Anatomy, lookup};
use crate::error::{Error, Result};
use crate::forward::{
    self, Activation, Attention, Block, Embedding, Head, Linear, Mlp, Norm, NormKind,
    PatchEmbedding, Placement, Positions,
};
use crate::read::Checkpoint;
use crate::rules::{ActivationKind, Axis, Direction, ForwardSpec, PositionKind};

/// Loads a checkpoint's weights into a forward-pass model.
pub struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    pub(super) anatomy: &'a Anatomy,
    spec: ForwardSpec,
}

impl<'a> Loader<'a> {
    /// A loader of `checkpoint`'s tensors for the forward pass of `anatomy`'s rules; refuses rules without a `[forward]` section.
    pub fn new(checkpoint: &'a Checkpoint, anatomy: &'a Anatomy) -> Result<Self> {
        let spec = anatomy
            .rules
            .forward
            .clone()
            .ok_or_else(|| Error::NoForward {
                arch: anatomy.rules.name.clone(),
            })?;
        Ok(Loader {
            checkpoint,
            anatomy,
            spec,
        })
    }

    /// A tensor by role as f32 with its rule axes, if present.
    fn get(&self, role: &str, layer: Option<usize>) -> Result<Option<(ArrayD<f32>, Vec<Axis>)>> {
        let Some(claim) = self.anatomy.by_role(role, layer) else {
            return Ok(None);
        };
        let info = self
            .checkpoint
            .info(&claim.name)
            .ok_or_else(|| missing(self, &claim.name))?;
        let values: Vec<f32> = self
            .checkpoint
            .values(&claim.name)?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let array = ArrayD::from_shape_vec(IxDyn(&info.shape), values)
            .map_err(|e| self.bad_shape(role, layer, &info.shape, e))?;
        let axes = self
            .anatomy
            .rule_of(claim)
            .map(|r| r.axes.clone())
            .unwrap_or_default();
        Ok(Some((array, axes)))
    }

    fn require(&self, role: &str, layer: Option<usize>) -> Result<(ArrayD<f32>, Vec<Axis>)> {
        self.get(role, layer)?
            .ok_or_else(|| self.missing_role(role, layer))
    }

    /// The error for a role the architecture needs and the checkpoint lacks.
    fn missing_role(&self, role: &str, layer: Option<usize>) -> Error {
        Error::MissingRole {
            path: self.checkpoint.path().to_path_buf(),
            arch: self.anatomy.rules.name.clone(),
            role: role.to_string(),
            layer,
        }
    }

    /// The error for a tensor whose shape does not fit its role.
    fn bad_shape(
        &self,
        role: &str,
        layer: Option<usize>,
        shape: &[usize],
        reason: impl std::fmt::Display,
    ) -> Error {
        let claim = self.anatomy.by_role(role, layer);
        Error::RoleShape {
            path: claim
                .and_then(|c| self.checkpoint.file_of(&c.name))
                .unwrap_or(self.checkpoint.path())
                .to_path_buf(),
            tensor: claim.map(|c| c.name.clone()).unwrap_or_default(),
            shape: shape.to_vec(),
            reason: format!("as `{role}`: {reason}"),
        }
    }

    /// The error for a model that cannot be run as it is.
    pub(super) fn unrunnable(&self, reason: impl Into<String>) -> Error {
        Error::Unrunnable {
            path: self.checkpoint.path().to_path_buf(),
            reason: reason.into(),
        }
    }

    fn vector(&self, role: &str, layer: Option<usize>) -> Result<Option<Array1<f32>>> {
        self.get(role, layer)?
            .map(|(a, _)| {
                let shape = a.shape().to_vec();
                a.into_shape_with_order(shape.iter().product::<usize>())
                    .map_err(|e| self.bad_shape(role, layer, &shape, e))
            })
            .transpose()
    }

    /// A weight as `[out, in]`: a matrix whose first axis is `in` (GPT-2's Conv1D) is
    /// transposed. Returns the out-axis parts too, for fused weights.
    fn matrix(&self, role: &str, layer: Option<usize>) -> Result<Option<(Array2<f32>, Vec<Axis>)>> {
        let Some((a, axes)) = self.get(role, layer)? else {
            return Ok(None);
        };
        let shape = a.shape().to_vec();
        let a = a
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| self.bad_shape(role, layer, &shape, "not a matrix"))?;
        let first_is_in = matches!(
            axes.first(),
            Some(Axis::Model {
                dir: Direction::In,
                ..
            })
        );
        Ok(Some(if first_is_in {
            (a.t().to_owned(), axes.into_iter().rev().collect())
        } else {
            (a, axes)
        }))
    }

    fn linear(&self, name: &str, layer: Option<usize>) -> Result<Option<Linear>> {
        let Some((weight, _)) = self.matrix(&format!("{name}.weight"), layer)? else {
            return Ok(None);
        };
        let bias = self.vector(&format!("{name}.bias"), layer)?;
        Ok(Some(Linear { weight, bias }))
    }

    fn require_linear(&self, name: &str, layer: Option<usize>) -> Result<Linear> {
        self.linear(name, layer)?
            .ok_or_else(|| self.missing_role(&format!("{name}.weight"), layer))
    }

    fn norm(&self, name: &str, layer: Option<usize>) -> Result<Option<Norm>> {
        let Some(weight) = self.vector(&format!("{name}.weight"), layer)? else {
            return Ok(None);
        };
        Ok(Some(Norm {
            kind: match self.spec.norm {
                crate::rules::NormKind::Layernorm => NormKind::LayerNorm,
                crate::rules::NormKind::Rmsnorm => NormKind::RmsNorm,
            },
            weight,
            bias: self.vector(&format!("{name}.bias"), layer)?,
            eps: self.eps(),
        }))
    }

    fn require_norm(&self, name: &str, layer: Option<usize>) -> Result<Norm> {
        self.norm(name, layer)?
            .ok_or_else(|| self.missing_role(&format!("{name}.weight"), layer))
    }

    fn config_f64(&self, keys: &[String]) -> Option<f64> {
        let config = self.checkpoint.config()?;
        keys.iter()
            .find_map(|k| lookup(config, k).and_then(Value::as_f64))
    }

    fn eps(&self) -> f32 {
        self.config_f64(&self.anatomy.rules.config.norm_eps)
            .or(self.spec.norm_eps)
            .unwrap_or(1e-5) as f32
    }

    fn activation(&self) -> Activation {
        match self.spec.activation {
            ActivationKind::GeluErf => Activation::GeluErf,
            ActivationKind::GeluTanh => Activation::GeluTanh,
            ActivationKind::Silu => Activation::Silu,
        }
    }

    /// q, k, v as separate projections, splitting a fused `qkv` along its output parts.
    fn attention(&self, layer: usize) -> Result<Attention> {
        let l = Some(layer);
        let o = self.require_linear("attn.o", l)?;
        if let Some((weight, axes)) = self.matrix("attn.qkv.weight", l)? {
            let bias = self.vector("attn.qkv.bias", l)?;
            let role = "attn.qkv.weight";
            let parts = match axes.first() {
                Some(Axis::Model { parts, .. }) => parts.as_slice(),
                _ => &[],
            };
            let &[q, k, v] = parts else {
                let reason = "its output axis must be fused from three parts";
                return Err(self.bad_shape(role, l, weight.shape(), reason));
            };
            let mut end = 0;
            let [q, k, v] = [q, k, v].map(|part| {
                let rows = end..end + self.anatomy.dims.space(part);
                end = rows.end;
                rows
            });
            if end > weight.nrows() || bias.as_ref().is_some_and(|b| b.len() < end) {
                let reason = format!("q, k and v take {end} rows");
                return Err(self.bad_shape(role, l, weight.shape(), reason));
            }
            let split = |rows: std::ops::Range<usize>| Linear {
                weight: weight.slice(s![rows.clone(), ..]).to_owned(),
                bias: bias.as_ref().map(|b| b.slice(s![rows]).to_owned()),
            };
            return Ok(Attention {
                q: split(q),
                k: split(k),
                v: split(v),
                o,
            });
        }
        Ok(Attention {
            q: self.require_linear("attn.q", l)?,
            k: self.require_linear("attn.k", l)?,
            v: self.require_linear("attn.v", l)?,
            o,
        })
    }

    /// The input embedding and positions: a token table, or a ViT patch embedding with its CLS
    /// (and distillation) tokens.
    fn embedding(&self) -> Result<(Embedding, Positions)> {
        if self.spec.positions == PositionKind::Patches {
            return Ok((
                Embedding::Patches(self.patch_embedding()?),
                Positions::Learned(self.patch_positions()?),
            ));
        }
        let (table, _) = self.require("embed.tokens", None)?;
        let table = self.two_d("embed.tokens", table)?;
        let token_type = self
            .get("embed.token_types", None)?
            .map(|(a, _)| {
                let shape = a.shape().to_vec();
                if a.ndim() == 0 || shape.first() == Some(&0) {
                    return Err(self.bad_shape("embed.token_types", None, &shape, "no rows"));
                }
                a.index_axis(NdAxis(0), 0)
                    .to_owned()
                    .into_dimensionality::<ndarray::Ix1>()
                    .map_err(|_| self.bad_shape("embed.token_types", None, &shape, "not a matrix"))
            })
            .transpose()?;
        let positions = match self.spec.positions {
            PositionKind::Learned => {
                let (p, _) = self.require("embed.positions", None)?;
                Positions::Learned(self.two_d("embed.positions", p)?)
            }
            PositionKind::Rope => Positions::Rope {
                theta: self
                    .config_f64(&self.anatomy.rules.config.rope_theta)
                    .unwrap_or(10_000.0) as f32,
            },
            PositionKind::Patches => Positions::None,
        };
        Ok((Embedding::Tokens { table, token_type }, positions))
    }

    /// The convolution `[hidden, channels, patch, patch]` (patch size from its shape), its
    /// bias, and the learned tokens put before the patches.
    fn patch_embedding(&self) -> Result<PatchEmbedding> {
        let role = "embed.patch.weight";
        let (weight, _) = self.require(role, None)?;
        let shape = weight.shape().to_vec();
        let weight = weight
            .into_dimensionality::<ndarray::Ix4>()
            .map_err(|_| self.bad_shape(role, None, &shape, "not a 4-D convolution kernel"))?;
        let (hidden, _, patch, patch_w) = weight.dim();
        if patch != patch_w {
            let reason = format!("the kernel is {patch}x{patch_w}, not square");
            return Err(self.bad_shape(role, None, &shape, reason));
        }
        let bias = self
            .vector("embed.patch.bias", None)?
            .unwrap_or_else(|| Array1::zeros(hidden));
        let cls_token = self
            .vector("embed.cls", None)?
            .ok_or_else(|| self.missing_role("embed.cls", None))?;
        let extra_tokens = self
            .vector("embed.distillation", None)?
            .into_iter()
            .collect();
        Ok(PatchEmbedding {
            weight,
            bias,
            patch,
            cls_token,
            extra_tokens,
        })
    }

    /// The position table as `[tokens, hidden]` (stored `[1, tokens, hidden]` by HF and timm).
    fn patch_positions(&self) -> Result<Array2<f32>> {
        let role = "embed.positions";
        let (table, axes) = self.require(role, None)?;
        let shape = table.shape().to_vec();
        let Some(&hidden) = axes
            .iter()
            .position(|a| matches!(a, Axis::Model { .. }))
            .and_then(|axis| shape.get(axis))
        else {
            return Err(self.bad_shape(role, None, &shape, "no hidden axis"));
        };
        let rows = table.len() / hidden.max(1);
        table
            .as_standard_layout()
            .to_owned()
            .into_shape_with_order((rows, hidden))
            .map_err(|e| self.bad_shape(role, None, &shape, e))
    }

    /// A 2-D table (`[rows, hidden]`) in `role`.
    fn two_d(&self, role: &str, table: ArrayD<f32>) -> Result<Array2<f32>> {
        let shape = table.shape().to_vec();
        table
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| self.bad_shape(role, None, &shape, "not a matrix"))
    }

    /// The forward-pass model.
    pub fn model(&self) -> Result<forward::Model> {
        let dims = &self.anatomy.dims;
        let (embedding, positions) = self.embedding()?;
        let blocks = (0..dims.layers)
            .map(|layer| {
                let l = Some(layer);
                Ok(Block {
                    attn_norm: self.require_norm("attn.norm", l)?,
                    attn: self.attention(layer)?,
                    mlp_norm: self.require_norm("mlp.norm", l)?,
                    mlp: Mlp {
                        up: self.require_linear("mlp.up", l)?,
                        gate: self.linear("mlp.gate", l)?,
                        down: self.require_linear("mlp.down", l)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if self.anatomy.has_head() {
            Some(self.head(&embedding)?)
        } else {
            None
        };
        Ok(forward::Model {
            embedding,
            positions,
            embedding_norm: self.norm("embed.norm", None)?,
            blocks,
            placement: match self.spec.placement {
                crate::rules::Placement::Pre => Placement::PreNorm,
                crate::rules::Placement::Post => Placement::PostNorm,
            },
            activation: self.activation(),
            causal: self.spec.causal,
            heads: dims.heads,
            kv_heads: dims.kv_heads,
            head_dim: dims.head_dim,
            final_norm: self.norm("final_norm", None)?,
            head,
        })
    }

    /// The output head: the `head.*` tensors, or the token embedding when tied.
    fn head(&self, embedding: &Embedding) -> Result<Head> {
        let output = match (self.linear("head", None)?, embedding) {
            (Some(head), _) if !self.anatomy.dims.tied => head,
            (_, Embedding::Tokens { table, .. }) => Linear {
                weight: table.clone(),
                bias: self.vector("head.bias", None)?,
            },
            (_, Embedding::Patches(_)) => {
                return Err(self.unrunnable("a patch model's head cannot be tied to an embedding"));
            }
        };
        let transform = match self.linear("head.transform", None)? {
            Some(linear) => Some((
                linear,
                self.activation(),
                self.require_norm("head.transform.norm", None)?,
            )),
            None => None,
        };
        Ok(Head {
            transform,
            output,
            pool_first_token: self.spec.pool_first_token,
            distillation: self.linear("head.distillation", None)?,
        })
    }

    /// The side of the square input image of a patch model: config.json's image size, else
    /// √(patches) × patch, the patches being the position rows less CLS and extra tokens.
    fn image_side(&self, patch: &PatchEmbedding, positions: usize) -> Result<usize> {
        if let Some(side) = self.config_f64(&self.anatomy.rules.config.image_size) {
            return Ok(side as usize);
        }
        let prefix = 1 + patch.extra_tokens.len();
        let patches = positions.saturating_sub(prefix);
        let grid = (patches as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid != patches {
            return Err(self.unrunnable(format!(
                "{positions} position embeddings less {prefix} learned tokens do not make a square grid of patches; give the image size in config.json"
            )));
        }
        Ok(grid * patch.patch)
    }

    /// What the model reads.
    pub(super) fn input_kind(&self, model: &forward::Model) -> Result<InputKind> {
        match (&model.embedding, &model.positions) {
            (Embedding::Patches(p), Positions::Learned(table)) => Ok(InputKind::Pixels {
                channels: p.weight.dim().1,
                side: self.image_side(p, table.nrows())?,
            }),
            (Embedding::Patches(_), _) => {
                Err(self.unrunnable("a patch model needs learned position embeddings"))
            }
            (Embedding::Tokens { table, .. }, _) if table.nrows() == 0 => {
                Err(self.unrunnable("its token embedding has no rows"))
            }
            (Embedding::Tokens { table, .. }, _) => Ok(InputKind::Tokens {
                vocab: table.nrows(),
            }),
        }
    }
}

fn missing(loader: &Loader<'_>, name: &str) -> Error {
    Error::MissingTensor {
        path: loader.checkpoint.path().to_path_buf(),
        tensor: name.to_string(),
        arch: loader.anatomy.rules.name.clone(),
    }
}
