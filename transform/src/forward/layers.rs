//! The per-token layers: linear maps, norms, activations and the MLP.

use ndarray::{Array2, ArrayView2};

use super::{Activation, Linear, Mlp, Norm, NormKind};

/// `x·Wᵀ + b` over rows of `x`.
pub(super) fn apply_linear(linear: &Linear, x: ArrayView2<f32>) -> Array2<f32> {
    let y = x.dot(&linear.weight.t());
    match &linear.bias {
        Some(b) => y + b,
        None => y,
    }
}

/// Normalises each row; statistics accumulate in f64 so that tiny `eps` (1e-12) and large
/// hidden sizes do not lose precision.
pub(super) fn apply_norm(norm: &Norm, x: ArrayView2<f32>) -> Array2<f32> {
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

pub(super) fn activate(x: &mut Array2<f32>, activation: Activation) {
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
pub(super) fn mlp(mlp: &Mlp, activation: Activation, x: ArrayView2<f32>) -> Array2<f32> {
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
