//! The `similar` schemes on whole checkpoints: they find groups planted by de-coalescing,
//! coalesce and grow choose the same groups from the same large model, and de-coalescing
//! without the large model refuses.

use std::path::Path;

use proptest::prelude::*;

use super::test_checkpoints::load;
use super::*;
use crate::convert::{Job, Options, open_model};
use crate::plan::Target;
use crate::scheme::SchemeSpec;
use crate::test_support::fixture_dir;

fn similar(heads: Option<usize>, layers: Option<usize>) -> Target {
    Target {
        heads,
        layers,
        width_scheme: SchemeSpec::Similar,
        depth_scheme: SchemeSpec::Similar,
        ..Target::default()
    }
}

fn options(target: Target) -> Options {
    Options {
        target,
        ..Default::default()
    }
}

fn normalized(mut groups: Vec<Vec<usize>>) -> Vec<Vec<usize>> {
    for g in &mut groups {
        g.sort_unstable();
    }
    groups.sort();
    groups
}

/// The width groups of a plan: key/value head groups under GQA, head groups otherwise.
fn width_groups(plan: &crate::plan::Plan) -> Vec<Vec<usize>> {
    plan.kv_head_groups
        .as_ref()
        .or(plan.head_groups.as_ref())
        .map(|g| g.groups().to_vec())
        .unwrap_or_default()
}

fn layer_groups(plan: &crate::plan::Plan) -> Vec<Vec<usize>> {
    plan.layer_groups
        .as_ref()
        .map(|g| g.groups().to_vec())
        .unwrap_or_default()
}

/// Random partitions of `2n` units into n pairs.
fn pairs(n: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    Just((0..2 * n).collect::<Vec<usize>>())
        .prop_shuffle()
        .prop_map(|perm| perm.chunks(2).map(<[usize]>::to_vec).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// De-coalescing with any groups makes the units of a group exact copies on every
    /// averaged axis; `similar` finds exactly those groups back, for heads and layers.
    #[test]
    fn similar_finds_the_groups_de_coalescing_planted(
        fixture in prop::sample::select(vec!["bert-tiny", "gpt2-tiny", "llama-tiny", "vit-tiny"]),
        heads in pairs(4),
        kv_heads in pairs(2),
        layers in pairs(4),
    ) {
        let work = tempfile::tempdir().expect("scratch directory");
        let large = work.path().join("large");
        let llama = fixture == "llama-tiny";
        let planted = if llama { kv_heads } else { heads };
        let up = Target {
            heads: Some(8),
            layers: Some(8),
            width_scheme: SchemeSpec::Explicit(planted.clone()),
            depth_scheme: SchemeSpec::Explicit(layers.clone()),
            ..Target::default()
        };
        Job::decoalesce(&fixture_dir(fixture), &options(up))
            .and_then(|job| job.write(&large, false))
            .expect("decoalesce");
        let job = Job::coalesce(&large, &options(similar(Some(4), Some(4)))).expect("coalesce");
        prop_assert_eq!(width_groups(job.plan()), normalized(planted));
        prop_assert_eq!(layer_groups(job.plan()), normalized(layers));
        let cost = job.plan().similar_heads.map(|c| c.chosen);
        prop_assert_eq!(cost, Some(0.0));
    }
}

fn write(job: crate::Result<Job>, out: &Path) {
    job.and_then(|job| job.write(out, false))
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

#[test]
fn coalesce_and_grow_choose_the_same_similar_groups() {
    for fixture in ["gpt2-tiny", "llama-tiny", "vit-tiny", "bert-tiny"] {
        let large = fixture_dir(fixture);
        let work = tempfile::tempdir().expect("scratch directory");
        let path = |name: &str| work.path().join(name);
        let down = Job::coalesce(&large, &options(similar(Some(2), Some(2)))).expect("coalesce");
        let (chosen_width, chosen_layers) = (width_groups(down.plan()), layer_groups(down.plan()));
        write(Ok(down), &path("small"));

        let grow =
            |alpha: f64| Job::grow(&path("small"), &large, alpha, &options(similar(None, None)));
        let up = grow(1.0).expect("grow");
        assert_eq!(width_groups(up.plan()), chosen_width, "{fixture}");
        assert_eq!(layer_groups(up.plan()), chosen_layers, "{fixture}");
        write(Ok(up), &path("grown1"));
        write(grow(0.0), &path("grown0"));

        // α = 0 is the large model bit for bit.
        let (original, _) = load(&large).expect("large");
        let (grown0, _) = load(&path("grown0")).expect("grown0");
        assert!(
            original == grown0,
            "{fixture}: grow α = 0 differs from the large model"
        );

        // α = 1 is the de-coalesced small model: coalescing it with the chosen groups gives the
        // small model back bit for bit (so grow used the groups coalescing chose).
        let again = Target {
            heads: Some(2),
            layers: Some(2),
            width_scheme: SchemeSpec::Explicit(chosen_width.clone()),
            depth_scheme: SchemeSpec::Explicit(chosen_layers.clone()),
            ..Target::default()
        };
        write(
            Job::coalesce(&path("grown1"), &options(again)),
            &path("back"),
        );
        let (small, _) = load(&path("small")).expect("small");
        let (back, _) = load(&path("back")).expect("back");
        assert!(
            small == back,
            "{fixture}: coalesce(grow α = 1) differs from the small model"
        );

        // Width de-coalescing preserves the small model's function (depth copies do not:
        // measure width alone).
        let width_only = Target {
            heads: Some(2),
            ..similar(None, None)
        };
        write(Job::coalesce(&large, &options(width_only)), &path("narrow"));
        write(
            Job::grow(&path("narrow"), &large, 1.0, &options(similar(None, None))),
            &path("wide"),
        );
        let (a, aa) = open_model(&path("narrow"), &Default::default()).expect("narrow");
        let (b, ab) = open_model(&path("wide"), &Default::default()).expect("wide");
        let d = verify((&a, &aa), (&b, &ab), 1, 2, 16)
            .expect("verify")
            .difference;
        assert!(d.relative <= 1e-5, "{fixture}: {:e}", d.relative);
    }
}

#[test]
fn similar_de_coalescing_without_the_large_model_is_refused() {
    let job = Job::decoalesce(&fixture_dir("gpt2-tiny"), &options(similar(Some(8), None)));
    assert!(
        matches!(&job, Err(Error::Scheme { reason, .. }) if reason.contains("grow with the saved large model")),
        "{:?}",
        job.as_ref().err()
    );
    // Layers likewise; with the sizes kept there is nothing to choose, so it is accepted.
    assert!(Job::decoalesce(&fixture_dir("gpt2-tiny"), &options(similar(None, Some(8)))).is_err());
    assert!(Job::decoalesce(&fixture_dir("gpt2-tiny"), &options(similar(None, None))).is_ok());
}
