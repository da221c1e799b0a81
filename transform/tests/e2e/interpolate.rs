//! `interpolate` and `grow`: exact end points (docs/operator-contract.md §3, property 3) and the weighted mean
//! in between.

use crate::util::{
    FIXTURES, Sandbox, Tensors, assert_tensors_eq, fixture, fixtures_dir, load, read_json,
};

/// Asserts `actual` = (1 − α)·large + α·other element-wise within 1e-6 (relative to the
/// magnitude, at least 1); non-float tensors must equal `large`'s.
fn assert_lerp(actual: &Tensors, large: &Tensors, other: &Tensors, alpha: f64, what: &str) {
    crate::util::assert_same_names_and_shapes(actual, large, what);
    for (name, l) in large {
        let a = &actual[name];
        if !l.is_float() {
            assert_eq!(a, l, "{what}: non-float {name}");
            continue;
        }
        let (av, lv, ov) = (a.values(), l.values(), other[name].values());
        for (i, ((x, l), o)) in av.iter().zip(&lv).zip(&ov).enumerate() {
            let expected = (1.0 - alpha) * l + alpha * o;
            assert!(
                (x - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "{what}: {name}[{i}] = {x:e}, expected {expected:e}"
            );
        }
    }
}

/// In a sandbox: `small` = coalesce(fixture) and `decoalesced` = decoalesce(small) back to
/// the fixture's sizes. Returns (large, decoalesced) tensors.
fn prepare(sb: &Sandbox, name: &str) -> (Tensors, Tensors) {
    let input = fixture(name);
    sb.ok([
        "coalesce",
        input.as_str(),
        "--heads",
        "2",
        "--layers",
        "2",
        "-o",
        "small",
    ]);
    sb.ok([
        "decoalesce",
        "small",
        "--heads",
        "4",
        "--layers",
        "4",
        "-o",
        "decoalesced",
    ]);
    let large = load(&fixtures_dir().join(name));
    let decoalesced = load(&sb.path("decoalesced"));
    assert_ne!(
        large, decoalesced,
        "{name}: the end points must differ for the test to mean anything"
    );
    (large, decoalesced)
}

#[test]
fn interpolate_end_points_are_exact_and_the_middle_is_the_weighted_mean() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let (large, decoalesced) = prepare(&sb, name);
        let input = fixture(name);
        for (alpha, out) in [("0", "a0"), ("1", "a1"), ("0.25", "a025")] {
            sb.ok([
                "interpolate",
                input.as_str(),
                "decoalesced",
                "--alpha",
                alpha,
                "-o",
                out,
            ]);
        }
        assert_tensors_eq(&load(&sb.path("a0")), &large, &format!("{name}: α = 0"));
        assert_tensors_eq(
            &load(&sb.path("a1")),
            &decoalesced,
            &format!("{name}: α = 1"),
        );
        assert_lerp(
            &load(&sb.path("a025")),
            &large,
            &decoalesced,
            0.25,
            &format!("{name}: α = 0.25"),
        );
        assert_eq!(
            read_json(&sb.path("a025/config.json")),
            read_json(&fixtures_dir().join(name).join("config.json")),
            "{name}: interpolate keeps LARGE's config.json"
        );
    }
}

#[test]
fn grow_end_points_are_large_and_decoalesced_and_the_middle_is_the_weighted_mean() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let (large, decoalesced) = prepare(&sb, name);
        let input = fixture(name);
        for (alpha, out) in [("0", "g0"), ("1", "g1"), ("0.25", "g025")] {
            sb.ok([
                "grow",
                "small",
                "--large",
                input.as_str(),
                "--alpha",
                alpha,
                "-o",
                out,
            ]);
        }
        assert_tensors_eq(
            &load(&sb.path("g0")),
            &large,
            &format!("{name}: grow α = 0"),
        );
        assert_tensors_eq(
            &load(&sb.path("g1")),
            &decoalesced,
            &format!("{name}: grow α = 1 is plain decoalesce"),
        );
        assert_lerp(
            &load(&sb.path("g025")),
            &large,
            &decoalesced,
            0.25,
            &format!("{name}: grow α = 0.25"),
        );
        assert_eq!(
            read_json(&sb.path("g025/config.json")),
            read_json(&fixtures_dir().join(name).join("config.json")),
            "{name}: grow writes the large model's sizes into config.json"
        );
    }
}

#[test]
fn grow_uses_the_given_width_scheme() {
    // Coalesced with adjacent groups, grown back with adjacent groups: α = 1 must equal
    // decoalesce with the same scheme, and differ from the strided default.
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    sb.ok([
        "coalesce",
        input.as_str(),
        "--heads",
        "2",
        "--width-scheme",
        "adjacent",
        "-o",
        "small",
    ]);
    for (scheme, out) in [("adjacent", "adjacent"), ("strided", "strided")] {
        sb.ok([
            "decoalesce",
            "small",
            "--heads",
            "4",
            "--width-scheme",
            scheme,
            "-o",
            &format!("d-{out}"),
        ]);
        sb.ok([
            "grow",
            "small",
            "--large",
            input.as_str(),
            "--alpha",
            "1",
            "--width-scheme",
            scheme,
            "-o",
            &format!("g-{out}"),
        ]);
        assert_tensors_eq(
            &load(&sb.path(&format!("g-{out}"))),
            &load(&sb.path(&format!("d-{out}"))),
            &format!("grow --width-scheme {scheme} at α = 1"),
        );
    }
    assert_ne!(
        load(&sb.path("g-adjacent")),
        load(&sb.path("g-strided")),
        "the width scheme must change what grow computes"
    );
}
