//! A Vision Transformer classifier in Burn whose checkpoints are HuggingFace
//! `ViTForImageClassification` directories: `vit.embeddings.{cls_token, position_embeddings}`,
//! `vit.embeddings.patch_embeddings.projection.{weight,bias}` (a convolution with stride =
//! kernel = patch), `vit.encoder.layer.{i}.attention.attention.{query,key,value}`, …,
//! `vit.layernorm` and the root `classifier` on the class token.
//!
//! Pre-LN encoder layers with exact (erf) GELU and full attention. The names and layouts come
//! from the `vit` preset's rules: burn-store's PyTorch adapters transpose the Linear weights and
//! rename the norms' `gamma`/`beta` (a convolution's layout is PyTorch's already), and
//! [`Vit::renames`] maps the flatter Burn modules to HuggingFace's nesting.

use std::path::Path;
use std::sync::Arc;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Distribution, Tensor, activation};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use serde_json::{Map, Value, json};
use vcycle_transform::ArchChoice;

use crate::checkpoint::layout::CheckpointLayout;
use crate::checkpoint::resizable::Resizable;
use crate::checkpoint::sizes::Sizes;
use crate::cycle::flops::train_flops;
use crate::cycle::{FlopCounter, VCycleModel};
use crate::data::images::ImageBatch;
use crate::error::{Error, Result};
use crate::models::attention::{attend, split_heads};
use crate::models::init::normal_linear;

/// The size of a [`Vit`] model.
#[derive(Config, Debug, PartialEq)]
pub struct VitConfig {
    /// Side of the square input images, in pixels (HF `image_size`).
    pub image_size: usize,
    /// Side of a square patch (HF `patch_size`); must divide `image_size`.
    pub patch_size: usize,
    /// Input channels (HF `num_channels`).
    pub channels: usize,
    /// Classes of the classifier (HF `id2label`'s length).
    pub labels: usize,
    /// Width of the residual stream (HF `hidden_size`).
    pub hidden: usize,
    /// Encoder layers (HF `num_hidden_layers`).
    pub layers: usize,
    /// Attention heads (HF `num_attention_heads`); must divide `hidden`.
    pub heads: usize,
    /// Width of the MLP (HF `intermediate_size`).
    pub ffn: usize,
    /// LayerNorm ε (HF `layer_norm_eps`).
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Standard deviation of the truncated-normal-like initialisation (HF `initializer_range`).
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl VitConfig {
    /// Patches per image.
    pub fn patches(&self) -> usize {
        let grid = self.image_size / self.patch_size.max(1);
        grid * grid
    }

    /// A randomly initialised model (N(0, σ²) weights and tokens, zero biases, unit norms).
    pub fn init(&self, device: &Device) -> Result<Vit> {
        self.check()?;
        let normal = Initializer::Normal {
            mean: 0.0,
            std: self.init_std,
        };
        let linear = |d_in: usize, d_out: usize| normal_linear(d_in, d_out, self.init_std, device);
        let norm = || {
            LayerNormConfig::new(self.hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let token = |shape: [usize; 3]| {
            Param::from_tensor(Tensor::random(
                shape,
                Distribution::Normal(0.0, self.init_std),
                device,
            ))
        };
        let layers = (0..self.layers)
            .map(|_| VitLayer {
                layernorm_before: norm(),
                query: linear(self.hidden, self.hidden),
                key: linear(self.hidden, self.hidden),
                value: linear(self.hidden, self.hidden),
                attn_out: linear(self.hidden, self.hidden),
                layernorm_after: norm(),
                intermediate: linear(self.hidden, self.ffn),
                output: linear(self.ffn, self.hidden),
                heads: self.heads,
            })
            .collect();
        let patch = [self.patch_size, self.patch_size];
        Ok(Vit {
            embeddings: VitEmbeddings {
                patch: Conv2dConfig::new([self.channels, self.hidden], patch)
                    .with_stride(patch)
                    .with_initializer(normal.clone())
                    .init(device),
                cls_token: token([1, 1, self.hidden]),
                position_embeddings: token([1, self.patches() + 1, self.hidden]),
            },
            layers,
            layernorm: norm(),
            classifier: linear(self.hidden, self.labels),
            config: self.clone(),
        })
    }

    fn check(&self) -> Result<()> {
        let bad = |message: String| {
            Err(Error::Model {
                model: "ViT",
                message,
            })
        };
        if [
            self.image_size,
            self.patch_size,
            self.channels,
            self.labels,
            self.hidden,
            self.layers,
            self.heads,
            self.ffn,
        ]
        .contains(&0)
        {
            return bad("every size must be positive".into());
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "patches of {} pixels do not tile images of {}",
                self.patch_size, self.image_size
            ));
        }
        if !self.hidden.is_multiple_of(self.heads) {
            return bad(format!(
                "{} heads do not divide the width {}",
                self.heads, self.hidden
            ));
        }
        Ok(())
    }

    /// The sizes of a model of this configuration; the settings are those of a
    /// `ViTForImageClassification`'s `config.json` beyond its sizes, so `transformers` loads it.
    pub fn sizes(&self) -> Sizes {
        let id2label: Map<String, Value> = (0..self.labels)
            .map(|i| (i.to_string(), Value::from(format!("LABEL_{i}"))))
            .collect();
        let label2id: Map<String, Value> = (0..self.labels)
            .map(|i| (format!("LABEL_{i}"), Value::from(i)))
            .collect();
        Sizes::new(self.layers, self.hidden, self.heads, self.ffn)
            .with_fixed("labels", self.labels)
            .with_fixed("positions", self.patches() + 1)
            .with_fixed("patch", self.patch_size)
            .with_fixed("channels", self.channels)
            .with_norm_eps(self.layer_norm_eps)
            .with_setting("architectures", json!(["ViTForImageClassification"]))
            .with_setting("hidden_act", "gelu")
            .with_setting("image_size", self.image_size)
            .with_setting("patch_size", self.patch_size)
            .with_setting("num_channels", self.channels)
            .with_setting("id2label", Value::Object(id2label))
            .with_setting("label2id", Value::Object(label2id))
            .with_setting("qkv_bias", true)
            .with_setting("hidden_dropout_prob", 0.0)
            .with_setting("attention_probs_dropout_prob", 0.0)
            .with_setting("initializer_range", self.init_std)
            .with_setting("torch_dtype", "float32")
    }

    /// The configuration of a model of these sizes: the patch, channels and classes from the
    /// tensors, the image size from `config.json` (or from the position embeddings' patches).
    pub fn from_sizes(sizes: &Sizes) -> Result<Self> {
        let patch = sizes.fixed("patch")?;
        let patches = sizes.fixed("positions")?.saturating_sub(1);
        let grid = (patches as f64).sqrt().round() as usize;
        if grid * grid != patches {
            return Err(Error::Sizes(format!(
                "ViT: {patches} patches do not form a square grid"
            )));
        }
        let image_size = sizes
            .settings
            .get("image_size")
            .and_then(Value::as_u64)
            .map_or(grid * patch, |s| s as usize);
        if image_size != grid * patch {
            return Err(Error::Sizes(format!(
                "ViT: image_size {image_size} disagrees with {patches} patches of {patch} pixels"
            )));
        }
        Ok(VitConfig::new(
            image_size,
            patch,
            sizes.fixed("channels")?,
            sizes.fixed("labels")?,
            sizes.dims.hidden,
            sizes.dims.layers,
            sizes.dims.heads,
            sizes.dims.ffn,
        )
        .with_layer_norm_eps(sizes.norm_eps.unwrap_or(1e-12))
        .with_init_std(sizes.setting_f64("initializer_range", 0.02)))
    }
}

/// A ViT image classifier: class token and patch embeddings, pre-LN encoder, final norm and a
/// linear classifier on the class token.
#[derive(Module, Debug)]
pub struct Vit {
    /// Patch projection, class token and position embeddings.
    pub(crate) embeddings: VitEmbeddings,
    /// The encoder layers.
    pub(crate) layers: Vec<VitLayer>,
    /// The final norm.
    pub(crate) layernorm: LayerNorm,
    /// The linear classifier on the class token.
    pub(crate) classifier: Linear,
    #[module(skip)]
    config: VitConfig,
}

/// The class token, the patch projection and the learned position embeddings.
#[derive(Module, Debug)]
pub struct VitEmbeddings {
    /// channels → hidden, kernel = stride = patch.
    pub(crate) patch: Conv2d,
    /// `[1, 1, hidden]`.
    pub(crate) cls_token: Param<Tensor<3>>,
    /// `[1, patches + 1, hidden]`, the class token's first.
    pub(crate) position_embeddings: Param<Tensor<3>>,
}

/// One pre-LN encoder layer.
#[derive(Module, Debug)]
pub struct VitLayer {
    pub(crate) layernorm_before: LayerNorm,
    pub(crate) query: Linear,
    pub(crate) key: Linear,
    pub(crate) value: Linear,
    pub(crate) attn_out: Linear,
    pub(crate) layernorm_after: LayerNorm,
    pub(crate) intermediate: Linear,
    pub(crate) output: Linear,
    heads: usize,
}

impl VitLayer {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = self.layernorm_before.forward(x.clone());
        let q = split_heads(self.query.forward(h.clone()), self.heads);
        let k = split_heads(self.key.forward(h.clone()), self.heads);
        let v = split_heads(self.value.forward(h), self.heads);
        let x = x + self.attn_out.forward(attend(q, k, v, false));
        let m = self
            .intermediate
            .forward(self.layernorm_after.forward(x.clone()));
        x + self.output.forward(activation::gelu(m))
    }
}

impl Vit {
    /// The model's size.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Class logits `[batch, labels]` for images `[batch, channels, side, side]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let patches = self.embeddings.patch.forward(images);
        let [batch, hidden, rows, cols] = patches.dims();
        let patches = patches
            .reshape([batch, hidden, rows * cols])
            .swap_dims(1, 2);
        let cls = self.embeddings.cls_token.val().repeat_dim(0, batch);
        let mut x = Tensor::cat(vec![cls, patches], 1) + self.embeddings.position_embeddings.val();
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let first = self
            .layernorm
            .forward(x)
            .narrow(1, 0, 1)
            .reshape([batch, hidden]);
        self.classifier.forward(first)
    }

    /// Logits and the mean cross-entropy of a batch.
    pub fn forward_classification(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for Vit {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let out = self.forward_classification(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl InferenceStep for Vit {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

impl Resizable for Vit {
    fn arch(&self) -> Result<ArchChoice> {
        Ok(ArchChoice::Preset("vit".into()))
    }

    /// After the PyTorch adapter, HuggingFace's nesting of the flatter Burn modules. In order,
    /// each seeing the previous one's result (`.output.` before `.attn_out.`, which becomes
    /// `.attention.output.dense.`).
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[
            (r"^layers\.", "encoder.layer."),
            (r"\.output\.", ".output.dense."),
            (r"\.intermediate\.", ".intermediate.dense."),
            (r"\.attn_out\.", ".attention.output.dense."),
            (r"\.(query|key|value)\.", ".attention.attention.$1."),
            (
                r"^embeddings\.patch\.",
                "embeddings.patch_embeddings.projection.",
            ),
        ]
    }

    fn sizes(&self) -> Sizes {
        self.config.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> Result<Self> {
        VitConfig::from_sizes(sizes)?.init(device)
    }
}

impl Vit {
    /// The model directory at `dir` (a `transformers` checkpoint, or one this crate wrote).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        CheckpointLayout::new(&ArchChoice::Preset("vit".into()))?
            .with_renames(<Self as Resizable>::renames())
            .load_model(dir, |sizes| VitConfig::from_sizes(sizes)?.init(device))
    }
}

/// A ViT sees each image as a sequence of its patches plus the class token.
impl VCycleModel for Vit {
    fn flop_counter(&self) -> Result<FlopCounter<ImageBatch>> {
        let tokens = self.config.patches() + 1;
        let per_image = train_flops(self, 1, tokens)?;
        Ok(Arc::new(move |batch: &ImageBatch| {
            per_image * batch.images.dims()[0] as f64
        }))
    }
}
