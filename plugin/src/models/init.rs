//! The initialisation the bundled models share.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

/// A Linear `d_in → d_out` with N(0, `std`²) weights and a zero bias, as HuggingFace
/// initialises BERT, GPT-2 and ViT.
pub(crate) fn normal_linear(d_in: usize, d_out: usize, std: f64, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    linear.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    linear
}
