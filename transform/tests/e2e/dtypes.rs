//! f16, bf16 and f64 checkpoints keep their dtype; int64 tensors pass through unchanged.

use safetensors::Dtype;

use crate::util::{
    Sandbox, Tensors, assert_tensors_eq, copy_dir, decode, encode, fixtures_dir, load, save,
};

/// Copies a fixture directory to `dest` with every float tensor re-encoded as `dtype`.
fn convert_fixture(sb: &Sandbox, name: &str, dtype: Dtype, dest: &str) -> Tensors {
    let to = sb.path(dest);
    copy_dir(&fixtures_dir().join(name), &to);
    let converted: Tensors = load(&to)
        .into_iter()
        .map(|(name, mut t)| {
            if t.is_float() {
                t.data = encode(dtype, &decode(t.dtype, &t.data));
                t.dtype = dtype;
            }
            (name, t)
        })
        .collect();
    save(&to.join("model.safetensors"), &converted, None);
    converted
}

const POSITION_IDS: &str = "bert.embeddings.position_ids";

#[test]
fn float_dtypes_are_preserved_and_int64_passes_through() {
    let original = load(&fixtures_dir().join("bert-tiny"));
    let position_ids = &original[POSITION_IDS];
    assert_eq!(position_ids.dtype, Dtype::I64, "the fixture's position_ids");

    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F64] {
        let sb = Sandbox::new();
        let input = convert_fixture(&sb, "bert-tiny", dtype, "in");
        sb.ok([
            "decoalesce",
            "in",
            "--heads",
            "8",
            "--layers",
            "8",
            "-o",
            "large",
        ]);
        let large = load(&sb.path("large"));
        assert_eq!(large.len(), 139, "{dtype:?}: tensors of the 8-layer model");
        for (name, t) in &large {
            let expected = if name == POSITION_IDS {
                Dtype::I64
            } else {
                dtype
            };
            assert_eq!(t.dtype, expected, "dtype of {name} in the {dtype:?} output");
        }
        assert_eq!(
            &large[POSITION_IDS], position_ids,
            "{dtype:?}: position_ids pass through unchanged"
        );
        // A duplicated `out` axis copies values exactly, whatever the dtype.
        let gamma = "bert.encoder.layer.5.output.LayerNorm.weight";
        let small_gamma = input["bert.encoder.layer.1.output.LayerNorm.weight"].values();
        let large_gamma = large[gamma].values();
        assert_eq!(large_gamma.len(), 128, "{gamma}");
        assert_eq!(
            large_gamma[..64],
            small_gamma[..],
            "{dtype:?}: {gamma}, first half"
        );

        sb.ok([
            "coalesce", "large", "--heads", "4", "--layers", "4", "-o", "back",
        ]);
        let back = load(&sb.path("back"));
        if dtype == Dtype::F16 {
            assert_f16_round_trip(&back, &input);
        } else {
            assert_tensors_eq(&back, &input, &format!("{dtype:?} round trip"));
        }
    }
}

#[test]
fn gpt2_half_precision_keeps_its_dtype() {
    let sb = Sandbox::new();
    convert_fixture(&sb, "gpt2-tiny", Dtype::BF16, "in");
    sb.ok(["coalesce", "in", "--heads", "2", "-o", "small"]);
    let small = load(&sb.path("small"));
    assert_eq!(small.len(), 52);
    for (name, t) in &small {
        assert_eq!(t.dtype, Dtype::BF16, "dtype of {name}");
    }
    assert_eq!(small["transformer.wte.weight"].shape, [128, 32]);
}

/// The f16 round trip: halving a value below 2^-13 lands in f16's subnormal range, whose
/// spacing is 2^-24, so that one bit can be lost on the way up (the de-coalesced file cannot
/// hold it). Every other element must come back bit for bit.
fn assert_f16_round_trip(back: &Tensors, input: &Tensors) {
    crate::util::assert_same_names_and_shapes(back, input, "f16 round trip");
    let subnormal_after_halving = 2f64.powi(-13);
    let mut inexact = 0;
    for (name, t) in input {
        if !t.is_float() {
            assert_eq!(back[name], *t, "f16 round trip: {name}");
            continue;
        }
        for (i, (x, y)) in t.values().iter().zip(back[name].values()).enumerate() {
            if *x == y {
                continue;
            }
            inexact += 1;
            assert!(
                x.abs() < subnormal_after_halving && (x - y).abs() <= 2f64.powi(-24),
                "f16 round trip: {name}[{i}] = {x:e} came back as {y:e}"
            );
        }
    }
    let total: usize = input
        .values()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    assert!(
        inexact * 1000 < total,
        "f16 round trip: {inexact} of {total} elements changed"
    );
}

#[test]
fn f16_round_trip_is_exact_outside_the_subnormal_range() {
    let sb = Sandbox::new();
    let input = convert_fixture(&sb, "bert-tiny", Dtype::F16, "in");
    sb.ok(["decoalesce", "in", "--heads", "8", "-o", "large"]);
    sb.ok(["coalesce", "large", "--heads", "4", "-o", "back"]);
    assert_f16_round_trip(&load(&sb.path("back")), &input);
}
