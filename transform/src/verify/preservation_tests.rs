//! docs/operator-contract.md §3 property 2 on the committed fixtures: width de-coalescing with the exact rule
//! preserves the function (BERT, GPT-2, Llama with GQA untied and tied, ViT, and ViT under
//! DeiT and timm names); the reference rule does not for pre-LN GPT-2; depth copying does not.
//! Also: GQA ratio checks, unequal groups, config.json rewriting and bit-exact round trips.

use std::path::Path;

use serde_json::{Value, json};

use super::test_checkpoints::{DeitParts, hf_vit_to_deit, hf_vit_to_timm, load, save};
use super::*;
use crate::anatomy::{ArchChoice, EmbeddingRule};
use crate::convert::{Job, Options, open_model};
use crate::plan::Target;
use crate::scheme::SchemeSpec;
use crate::test_support::fixture_dir;

fn measure_dir(model: &Path, target: Target) -> RegrowMeasurement {
    let work = tempfile::tempdir().expect("scratch directory");
    decoalesce_difference(model, &target, work.path(), 7)
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

fn measure(fixture: &str, target: Target) -> RegrowMeasurement {
    measure_dir(&fixture_dir(fixture), target)
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
    // Llama has 4 query heads over 2 key/value heads: 2 query / 1 kv head keeps the ratio,
    // 1 query head cannot.
    for (fixture, head_counts) in [
        ("bert-tiny", &[2, 1][..]),
        ("gpt2-tiny", &[2, 1]),
        ("llama-tiny", &[2]),
        ("llama-tied-tiny", &[2]),
        ("vit-tiny", &[2, 1]),
    ] {
        for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent] {
            // 4 heads -> 2 heads is groups of 2; 4 -> 1 is one group of 4.
            for &heads in head_counts {
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

/// A random Llama with 8 query heads over 4 key/value heads, so that strided and adjacent kv
/// groupings differ: 8q/4kv → 4q/2kv (groups of 2) and → 2q/1kv (one group of 4).
#[test]
fn gqa_width_decoalescing_preserves_logits_for_every_scheme() {
    for tied in [false, true] {
        let mut spec = crate::fixture::llama_lm(21, tied);
        spec.dims.heads = 8;
        spec.dims.kv_heads = 4;
        spec.dims.hidden = 128;
        spec.dims.ffn = 352;
        let work = tempfile::tempdir().expect("scratch directory");
        let dir = work.path().join("llama-8q-4kv");
        crate::fixture::write_dir(&spec, &dir).expect("fixture");
        let explicit = SchemeSpec::Explicit(vec![vec![3, 0], vec![1, 2]]);
        for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent, explicit] {
            for heads in [4, 2] {
                if heads == 2 && matches!(scheme, SchemeSpec::Explicit(_)) {
                    continue;
                }
                let m = measure_dir(&dir, width(heads, scheme.clone(), EmbeddingRule::Exact));
                let rel = m.difference.relative;
                println!(
                    "llama 8q/4kv tied={tied} {scheme} -> {heads}q/{}kv: relative {rel:.2e}",
                    heads / 2
                );
                assert!(
                    rel <= 1e-5,
                    "tied={tied} {scheme} {heads}: relative {rel:e}"
                );
            }
        }
    }
}

/// Qwen2: the Llama names with q/k/v biases (and `model_type` = qwen2); the biases follow
/// their heads and the function is preserved.
#[test]
fn qwen2_attention_biases_preserve_logits() {
    let mut spec = crate::fixture::llama_lm(22, false);
    spec.optional.extend(
        ["q_proj", "k_proj", "v_proj"].map(|p| format!("layers.{{layer}}.self_attn.{p}.bias")),
    );
    let work = tempfile::tempdir().expect("scratch directory");
    let dir = work.path().join("qwen2");
    crate::fixture::write_dir(&spec, &dir).expect("fixture");
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("config")).expect("json");
    config["model_type"] = json!("qwen2");
    std::fs::write(&path, config.to_string()).expect("write config");
    let (checkpoint, anatomy) = open_model(&dir, &ArchChoice::Detect).expect("open");
    assert_eq!(anatomy.rules.name, "llama");
    assert!(
        checkpoint
            .tensors()
            .keys()
            .any(|n| n.ends_with("k_proj.bias"))
    );
    for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent] {
        let m = measure_dir(&dir, width(2, scheme.clone(), EmbeddingRule::Exact));
        let rel = m.difference.relative;
        println!("qwen2 (biases) {scheme} 4q/2kv -> 2q/1kv: relative {rel:.2e}");
        assert!(rel <= 1e-5, "{scheme}: relative {rel:e}");
    }
}

/// Seeded N(0, scale²) values.
fn normal(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    random_normal(seed, &[n])
        .iter()
        .map(|v| v * scale)
        .collect()
}

/// The ViT fixture as a DeiTForImageClassificationWithTeacher (random distillation token,
/// position row and head), and under timm's names: both preserve the function too.
#[test]
fn deit_and_timm_names_preserve_logits() {
    let (tensors, config) = load(&fixture_dir("vit-tiny")).expect("vit fixture");
    let config = config.expect("config.json");
    let (hidden, labels, layers) = (64, 10, 4);
    let work = tempfile::tempdir().expect("scratch directory");

    let deit = hf_vit_to_deit(
        &tensors,
        &DeitParts {
            distillation_token: normal(11, hidden, 0.5),
            distillation_position: normal(12, hidden, 0.5),
            distillation_head: Some((normal(13, labels * hidden, 0.125), normal(14, labels, 0.2))),
        },
    )
    .expect("deit names");
    let mut deit_config = config.clone();
    deit_config["model_type"] = json!("deit");
    deit_config["architectures"] = json!(["DeiTForImageClassificationWithTeacher"]);
    let deit_dir = work.path().join("deit");
    save(&deit_dir, &deit, Some(&deit_config)).expect("save deit");

    let timm_dir = work.path().join("timm");
    save(
        &timm_dir,
        &hf_vit_to_timm(&tensors, layers).expect("timm names"),
        Some(&json!({"num_heads": 4})),
    )
    .expect("save timm");

    for (name, dir, arch) in [("deit", &deit_dir, "vit"), ("timm", &timm_dir, "vit-timm")] {
        let (_, anatomy) = open_model(dir, &ArchChoice::Detect).expect("open");
        assert_eq!(anatomy.rules.name, arch, "{name}");
        for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent] {
            let m = measure_dir(dir, width(2, scheme.clone(), EmbeddingRule::Exact));
            let rel = m.difference.relative;
            println!("{name} {scheme} groups of 2: relative {rel:.2e}");
            assert!(rel <= 1e-5, "{name} {scheme}: relative {rel:e}");
        }
    }
}

fn coalesce_error(fixture: &str, target: Target) -> String {
    let options = Options {
        target,
        ..Default::default()
    };
    match Job::coalesce(&fixture_dir(fixture), &options) {
        Ok(_) => panic!("{fixture}: the conversion was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn gqa_head_counts_that_break_the_query_per_kv_ratio_are_refused() {
    // 4 query heads over 2 kv heads: 3 query heads cannot keep 2 per kv head.
    let err = coalesce_error(
        "llama-tiny",
        Target {
            heads: Some(3),
            ..Target::default()
        },
    );
    assert!(
        err.contains("3 heads cannot keep 2 query heads per key/value head")
            && err.contains("give the key/value heads"),
        "{err}"
    );
    // 2 query heads over 2 kv heads would be 1 per kv head.
    let err = coalesce_error(
        "llama-tiny",
        Target {
            heads: Some(2),
            kv_heads: Some(2),
            ..Target::default()
        },
    );
    assert!(
        err.contains(
            "2 query heads over 2 key/value heads changes the 2 query heads per key/value head"
        ),
        "{err}"
    );
    // The ratio kept, given explicitly: accepted.
    let options = Options {
        target: Target {
            heads: Some(2),
            kv_heads: Some(1),
            ..Target::default()
        },
        ..Default::default()
    };
    let job = Job::coalesce(&fixture_dir("llama-tiny"), &options).expect("2 q / 1 kv");
    let plan = job.plan();
    assert_eq!(
        plan.kv_head_groups.as_ref().map(|g| g.groups().to_vec()),
        Some(vec![vec![0, 1]])
    );
    assert_eq!(
        plan.head_groups.as_ref().map(|g| g.groups().to_vec()),
        Some(vec![vec![0, 2], vec![1, 3]])
    );
}

/// 4 → 2 heads as [[0, 1, 2], [3]]: converted both ways, with the warning.
#[test]
fn unequal_groups_convert_with_a_warning() {
    for fixture in ["vit-tiny", "gpt2-tiny"] {
        let scheme = SchemeSpec::Explicit(vec![vec![0, 1, 2], vec![3]]);
        let options = Options {
            target: width(2, scheme.clone(), EmbeddingRule::Exact),
            ..Default::default()
        };
        let work = tempfile::tempdir().expect("scratch directory");
        let small = work.path().join("small");
        let job = Job::coalesce(&fixture_dir(fixture), &options).expect("coalesce");
        assert!(job.plan().unequal_groups);
        assert!(
            job.warnings()
                .iter()
                .any(|w| w.contains("unequal") && w.contains("not function preserving")),
            "{:?}",
            job.warnings()
        );
        job.write(&small, false).expect("write small");
        let (_, small_anatomy) = open_model(&small, &ArchChoice::Detect).expect("small");
        assert_eq!(
            (small_anatomy.dims.heads, small_anatomy.dims.hidden),
            (2, 32)
        );
        let back = Options {
            target: width(4, scheme.clone(), EmbeddingRule::Exact),
            ..Default::default()
        };
        let job = Job::decoalesce(&small, &back).expect("decoalesce");
        assert!(!job.warnings().is_empty());
        job.write(&work.path().join("grown"), false)
            .expect("write grown");

        let m = measure(fixture, width(2, scheme, EmbeddingRule::Exact));
        println!(
            "{fixture} groups [[0,1,2],[3]]: relative {:.2e} (not function preserving)",
            m.difference.relative
        );
    }
}

/// The keys of `a` whose values differ in `b`, and keys present in only one.
fn changed_keys(a: &Value, b: &Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["<not objects>".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn coalesced_config(fixture: &str, target: Target) -> (Value, Value) {
    let work = tempfile::tempdir().expect("scratch directory");
    let out = work.path().join("small");
    let options = Options {
        target,
        ..Default::default()
    };
    Job::coalesce(&fixture_dir(fixture), &options)
        .and_then(|job| job.write(&out, false))
        .expect("coalesce");
    let read = |dir: &Path| -> Value {
        let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        serde_json::from_str(&text).expect("json")
    };
    (read(&fixture_dir(fixture)), read(&out))
}

#[test]
fn config_rewrite_sets_every_size_field_and_nothing_else() {
    let (before, after) = coalesced_config(
        "llama-tiny",
        Target {
            heads: Some(2),
            layers: Some(2),
            ..Target::default()
        },
    );
    assert_eq!(
        changed_keys(&before, &after),
        [
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads"
        ]
    );
    for (key, value) in [
        ("hidden_size", 32),
        ("intermediate_size", 88),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 2),
        ("num_key_value_heads", 1),
        // The head size is a size field too; it is kept.
        ("head_dim", 16),
    ] {
        assert_eq!(after[key], json!(value), "llama {key}");
    }

    let (before, after) = coalesced_config(
        "vit-tiny",
        Target {
            heads: Some(2),
            layers: Some(2),
            ..Target::default()
        },
    );
    assert_eq!(
        changed_keys(&before, &after),
        [
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers"
        ]
    );
    for (key, value) in [
        ("hidden_size", 32),
        ("intermediate_size", 128),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 2),
    ] {
        assert_eq!(after[key], json!(value), "vit {key}");
    }
}

/// De-coalesce (width and depth) then coalesce back gives the fixture bit for bit, config.json
/// included.
#[test]
fn decoalesce_then_coalesce_is_bit_exact() {
    for (fixture, heads, kv_heads) in [
        ("llama-tiny", 8, 4),
        ("llama-tied-tiny", 8, 4),
        ("vit-tiny", 8, 8),
    ] {
        for scheme in [SchemeSpec::Strided, SchemeSpec::Adjacent] {
            let work = tempfile::tempdir().expect("scratch directory");
            let (large, back) = (work.path().join("large"), work.path().join("back"));
            let up = Options {
                target: Target {
                    heads: Some(heads),
                    kv_heads: Some(kv_heads),
                    layers: Some(8),
                    width_scheme: scheme.clone(),
                    depth_scheme: scheme.clone(),
                    ..Target::default()
                },
                ..Default::default()
            };
            Job::decoalesce(&fixture_dir(fixture), &up)
                .and_then(|job| job.write(&large, false))
                .expect("decoalesce");
            let down = Options {
                target: Target {
                    heads: Some(4),
                    kv_heads: None,
                    layers: Some(4),
                    ..up.target.clone()
                },
                ..Default::default()
            };
            Job::coalesce(&large, &down)
                .and_then(|job| job.write(&back, false))
                .expect("coalesce");
            let (original, original_config) = load(&fixture_dir(fixture)).expect("fixture");
            let (round, round_config) = load(&back).expect("round trip");
            assert_eq!(
                original.keys().collect::<Vec<_>>(),
                round.keys().collect::<Vec<_>>(),
                "{fixture} {scheme}"
            );
            for (name, raw) in &original {
                assert!(round.get(name) == Some(raw), "{fixture} {scheme}: {name}");
            }
            assert_eq!(original_config, round_config, "{fixture} {scheme}");
        }
    }
}
