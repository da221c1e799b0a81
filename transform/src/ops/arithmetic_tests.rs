//! The arithmetic: interpolation's end points, splits and means as the plain divisions, and
//! the depth mean of equal layers.

use super::*;

#[test]
fn interpolation_end_points_keep_signed_zero() {
    let large = [-0.0f64, 1.0];
    let small = [0.0, 3.0];
    let interpolate = |alpha| {
        let mut out = small;
        interpolate_into(&large, &mut out, alpha);
        out
    };
    assert_eq!(interpolate(0.0)[0].to_bits(), (-0.0f64).to_bits());
    assert_eq!(interpolate(1.0), small);
    assert_eq!(interpolate(0.25), [0.0, 1.5]);
}

#[test]
fn splits_and_means_are_the_plain_divisions_bit_for_bit() {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(3);
    let mut values: Vec<f64> = (0..200_000)
        .map(|_| f64::from_bits(rng.random::<u64>()))
        .collect();
    values.extend([
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        5e-324,
        f64::MAX,
        f64::INFINITY,
    ]);
    let rows: Vec<Vec<f64>> = (0..3)
        .map(|k| values.iter().map(|v| v * [1.0, -0.5, 3.0][k]).collect())
        .collect();
    let same = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan())
    };
    for divisor in [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 0.5] {
        let mut ours = vec![0.0; values.len()];
        combine(&mut ours, &[0], divisor, |_| &values);
        let plain: Vec<f64> = values.iter().map(|v| v / divisor).collect();
        assert!(same(&ours, &plain), "split by {divisor}");
    }
    for n in 2..=3 {
        let layers: Vec<&[f64]> = rows.iter().take(n).map(Vec::as_slice).collect();
        let mut ours = vec![0.0; values.len()];
        mean_into(&mut ours, &layers);
        let plain: Vec<f64> = (0..values.len())
            .map(|i| {
                let first = layers[0][i];
                let d = layers[1..].iter().fold(0.0, |d, l| d + (l[i] - first));
                first + d / n as f64
            })
            .collect();
        assert!(same(&ours, &plain), "mean of {n}");
    }
}

#[test]
fn depth_mean_of_equal_layers_is_exact() {
    let x = [0.1, -3.7, 1e300];
    let mut out = [0.0; 3];
    mean_into(&mut out, &[&x, &x, &x]);
    assert_eq!(out, x);
    mean_into(&mut out, &[&[1.0, 2.0, 3.0], &[3.0, 4.0, 5.0]]);
    assert_eq!(out, [2.0, 3.0, 4.0]);
}
