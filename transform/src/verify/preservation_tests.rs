//! SPEC §3 property 2 on the committed fixtures: width de-coalescing with the exact rule
//! preserves the function; the reference rule does not for pre-LN GPT-2; depth copying does not.

use super::*;
use crate::anatomy::EmbeddingRule;
use crate::plan::Target;
use crate::scheme::SchemeSpec;
use crate::test_support::fixture_dir;

fn measure(fixture: &str, target: Target) -> RegrowMeasurement {
    let work = tempfile::tempdir().expect("scratch directory");
    decoalesce_difference(&fixture_dir(fixture), &target, work.path(), 7)
        .unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

fn width(heads: usize, scheme: SchemeSpec, rule: EmbeddingRule) -> Target {
    Target {
        heads: Some(heads),
        width_scheme: scheme,
        embedding_rule: rule,
        ..Target::default()
    }
}

#[test]
fn exact_width_decoalescing_preserves_logits() {
    for fixture in ["bert-tiny", "gpt2-tiny"] {
        for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent] {
            // 4 heads -> 2 heads is groups of 2; 4 -> 1 is one group of 4.
            for heads in [2, 1] {
                let m = measure(fixture, width(heads, scheme.clone(), EmbeddingRule::Exact));
                let rel = m.difference.relative;
                println!(
                    "{fixture} {scheme} groups of {}: relative {rel:.2e}",
                    4 / heads
                );
                assert!(
                    rel <= 1e-5,
                    "{fixture} {scheme} heads {heads}: relative {rel:e}"
                );
            }
        }
    }
}

#[test]
fn explicit_width_groups_preserve_logits() {
    let scheme = SchemeSpec::Explicit(vec![vec![3, 0], vec![1, 2]]);
    let m = measure("gpt2-tiny", width(2, scheme, EmbeddingRule::Exact));
    assert!(m.difference.relative <= 1e-5, "{:e}", m.difference.relative);
}

#[test]
fn reference_rule_fails_for_gpt2_and_holds_for_bert() {
    let gpt2 = measure(
        "gpt2-tiny",
        width(2, SchemeSpec::Strided, EmbeddingRule::Reference),
    );
    assert!(
        gpt2.difference.relative > 1e-3,
        "the reference rule should break pre-LN GPT-2: {:e}",
        gpt2.difference.relative
    );
    let bert = measure(
        "bert-tiny",
        width(2, SchemeSpec::Strided, EmbeddingRule::Reference),
    );
    assert!(
        bert.difference.relative <= 1e-5,
        "{:e}",
        bert.difference.relative
    );
}

#[test]
fn depth_decoalescing_changes_the_function() {
    for fixture in ["bert-tiny", "gpt2-tiny"] {
        let m = measure(
            fixture,
            Target {
                layers: Some(2),
                ..Target::default()
            },
        );
        assert!(
            m.difference.relative > 1e-2,
            "{fixture}: copying layers should stack them: {:e}",
            m.difference.relative
        );
    }
}

#[test]
fn grow_end_points() {
    let work = tempfile::tempdir().expect("scratch directory");
    let large = fixture_dir("gpt2-tiny");
    let options = crate::convert::Options {
        target: width(2, SchemeSpec::Strided, EmbeddingRule::Exact),
        ..Default::default()
    };
    let small = work.path().join("small");
    crate::convert::Job::coalesce(&large, &options)
        .and_then(|job| job.write(&small, false))
        .expect("coalesce");
    let grown = |alpha: f64| {
        let out = work.path().join(format!("grown-{alpha}"));
        crate::convert::Job::grow(&small, &large, alpha, &crate::convert::Options::default())
            .and_then(|job| job.write(&out, false))
            .expect("grow");
        out
    };

    // α = 0: the saved large model, bit for bit.
    let g0 = Checkpoint::open(grown(0.0)).expect("open");
    let l = Checkpoint::open(&large).expect("open");
    assert_eq!(g0.tensors().len(), l.tensors().len());
    for name in l.tensors().keys() {
        assert_eq!(g0.bytes(name), l.bytes(name), "{name}");
    }

    // α = 1: the de-coalesced model, which computes the small model's function.
    let g1 = grown(1.0);
    let arch = crate::anatomy::ArchChoice::Detect;
    let (s, sa) = crate::convert::open_model(&small, &arch).expect("small");
    let (g, ga) = crate::convert::open_model(&g1, &arch).expect("grown");
    let v = verify((&s, &sa), (&g, &ga), 3, 2, 16).expect("verify");
    assert!(v.difference.relative <= 1e-5, "{:e}", v.difference.relative);
}
