//! The inputs models are run on: their kind, and seeded random tokens and pixels.

use ndarray::{Array2, Array4, ArrayD, IxDyn};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::forward::Input;

/// The kind and geometry of a model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InputKind {
    Tokens { vocab: usize },
    Pixels { channels: usize, side: usize },
}

/// A model input owned by the caller.
#[derive(Debug, Clone)]
pub enum ModelInput {
    /// Token ids, `[batch, seq]`.
    Tokens(Array2<i64>),
    /// Images, `[batch, channels, height, width]`.
    Pixels(Array4<f32>),
}

impl ModelInput {
    /// A view for [`forward::forward`].
    ///
    /// [`forward::forward`]: crate::forward::forward
    pub fn view(&self) -> Input<'_> {
        match self {
            ModelInput::Tokens(ids) => Input::Tokens(ids.view()),
            ModelInput::Pixels(p) => Input::Pixels(p.view()),
        }
    }

    pub(super) fn describe(&self, seed: u64) -> String {
        match self {
            ModelInput::Tokens(ids) => {
                let (b, s) = ids.dim();
                format!("{b} x {s} random tokens, seed {seed}")
            }
            ModelInput::Pixels(p) => {
                let (b, c, h, w) = p.dim();
                format!("{b} x {c} x {h} x {w} random N(0, 1) pixels, seed {seed}")
            }
        }
    }
}

/// Seeded random token ids in `0..vocab` (None for an empty vocabulary).
pub fn random_tokens(seed: u64, batch: usize, seq: usize, vocab: usize) -> Option<Array2<i64>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dist = Uniform::new(0, i64::try_from(vocab).ok()?).ok()?;
    Some(Array2::from_shape_fn((batch, seq), |_| {
        dist.sample(&mut rng)
    }))
}

/// Seeded standard-normal values of any shape (random pixels for image models).
pub fn random_normal(seed: u64, shape: &[usize]) -> ArrayD<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        let z: f64 = StandardNormal.sample(&mut rng);
        z as f32
    })
}

/// The seeded random input for a model: `batch` × `seq` tokens, or `batch` images of the
/// model's channels and size (`seq` is then unused); None for an empty vocabulary.
pub(super) fn random_input(
    kind: InputKind,
    seed: u64,
    batch: usize,
    seq: usize,
) -> Option<ModelInput> {
    match kind {
        InputKind::Tokens { vocab } => {
            random_tokens(seed, batch, seq, vocab).map(ModelInput::Tokens)
        }
        InputKind::Pixels { channels, side } => {
            // The values and order of `random_normal`, as a 4-D array.
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            Some(ModelInput::Pixels(Array4::from_shape_fn(
                (batch, channels, side, side),
                |_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    z as f32
                },
            )))
        }
    }
}
