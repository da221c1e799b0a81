//! The reference implementation's arithmetic (docs/operator-contract.md §3), checked against values derived by
//! hand from explicit index formulas — not from the gathers under test — on a GPT-2 with
//! hidden 4, 4 heads of size 1, FFN 8 (blocks of 2), 4 layers, vocabulary 3.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::anatomy::{Dims, EmbeddingRule};
use crate::fixture::{self, FixtureSpec};

const WIDTH: &str = "[[0,2],[1,3]]";

/// A GPT-2 with hidden 4, 4 heads of size 1, vocabulary 3 and 2 positions.
fn gpt2_spec(layers: usize, ffn: usize, seed: u64) -> FixtureSpec {
    FixtureSpec {
        dims: Dims {
            layers,
            hidden: 4,
            heads: 4,
            kv_heads: 4,
            head_dim: 1,
            ffn,
            tied: true,
            fixed: BTreeMap::from([("vocab".into(), 3), ("positions".into(), 2)]),
        },
        ..fixture::gpt2_lm(seed)
    }
}

fn tiny_gpt2(dir: &Path) -> PathBuf {
    let path = dir.join("large");
    fixture::write_dir(&gpt2_spec(4, 8, 11), &path).expect("fixture");
    path
}

fn run(job: Result<Job>, out: &Path) -> Checkpoint {
    job.and_then(|j| j.write(out, false)).expect("conversion");
    Checkpoint::open(out).expect("open output")
}

fn options(
    heads: Option<usize>,
    layers: Option<usize>,
    depth: &str,
    rule: EmbeddingRule,
) -> Options {
    // An explicit width scheme must match the head counts, so it is only given with --heads.
    let width = if heads.is_some() { WIDTH } else { "strided" };
    Options {
        target: Target {
            heads,
            layers,
            width_scheme: width.parse().expect("scheme"),
            depth_scheme: depth.parse().expect("scheme"),
            embedding_rule: rule,
            ..Target::default()
        },
        ..Options::default()
    }
}

fn values(c: &Checkpoint, name: &str) -> Vec<f64> {
    c.values(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // Outputs are f32: compare at f32 precision.
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}[{i}]: {g} != {w}"
        );
    }
}

/// Small hidden/head unit t of [[0,2],[1,3]] takes large units t and t + 2.
const G: [[usize; 2]; 2] = [[0, 2], [1, 3]];

#[test]
fn reference_coalesce_sums_embeddings_and_averages_the_rest() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let large = Checkpoint::open(&large_path).expect("open");
    let job = Job::coalesce(
        &large_path,
        &options(Some(2), None, "strided", EmbeddingRule::Reference),
    );
    let small = run(job, &tmp.path().join("small"));

    // Embeddings: columns summed (the reference's ×2 after averaging).
    let wte = values(&large, "transformer.wte.weight");
    let want: Vec<f64> = (0..3)
        .flat_map(|v| G.map(|g| wte[v * 4 + g[0]] + wte[v * 4 + g[1]]))
        .collect();
    assert_close(&values(&small, "transformer.wte.weight"), &want, "wte");

    // The final norm is an ordinary `out` tensor under the reference rule: averaged.
    let ln_f = values(&large, "transformer.ln_f.weight");
    let want: Vec<f64> = G.iter().map(|g| (ln_f[g[0]] + ln_f[g[1]]) / 2.0).collect();
    assert_close(&values(&small, "transformer.ln_f.weight"), &want, "ln_f");

    // c_attn [in 4, out 12 = q|k|v]: rows (in) summed, each part's columns (out) averaged.
    let w = values(&large, "transformer.h.0.attn.c_attn.weight");
    let mut want = Vec::new();
    for gi in G {
        for part in 0..3 {
            for go in G {
                let mut acc = 0.0;
                for i in gi {
                    acc += (w[i * 12 + part * 4 + go[0]] + w[i * 12 + part * 4 + go[1]]) / 2.0;
                }
                want.push(acc);
            }
        }
    }
    assert_close(
        &values(&small, "transformer.h.0.attn.c_attn.weight"),
        &want,
        "c_attn",
    );

    // c_fc [in 4, out ffn 8]: FFN blocks of 2 follow the heads, so small element 2t + r takes
    // large elements 2u + r for u in group t.
    let w = values(&large, "transformer.h.1.mlp.c_fc.weight");
    let mut want = Vec::new();
    for gi in G {
        for go in G {
            for r in 0..2 {
                let mut acc = 0.0;
                for i in gi {
                    acc += (w[i * 8 + 2 * go[0] + r] + w[i * 8 + 2 * go[1] + r]) / 2.0;
                }
                want.push(acc);
            }
        }
    }
    assert_close(
        &values(&small, "transformer.h.1.mlp.c_fc.weight"),
        &want,
        "c_fc",
    );
}

#[test]
fn exact_coalesce_averages_embeddings_and_sums_the_tied_heads_norm() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let large = Checkpoint::open(&large_path).expect("open");
    let job = Job::coalesce(
        &large_path,
        &options(Some(2), None, "strided", EmbeddingRule::Exact),
    );
    let small = run(job, &tmp.path().join("small"));
    let wpe = values(&large, "transformer.wpe.weight");
    let want: Vec<f64> = (0..2)
        .flat_map(|p| G.map(|g| (wpe[p * 4 + g[0]] + wpe[p * 4 + g[1]]) / 2.0))
        .collect();
    assert_close(&values(&small, "transformer.wpe.weight"), &want, "wpe");
    let ln_f = values(&large, "transformer.ln_f.bias");
    let want: Vec<f64> = G.iter().map(|g| ln_f[g[0]] + ln_f[g[1]]).collect();
    assert_close(&values(&small, "transformer.ln_f.bias"), &want, "ln_f bias");
}

#[test]
fn reference_decoalesce_halves_embeddings_and_splits_inputs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let small_path = tmp.path().join("small");
    let reference = options(Some(2), None, "strided", EmbeddingRule::Reference);
    run(Job::coalesce(&large_path, &reference), &small_path);
    let small = Checkpoint::open(&small_path).expect("open");
    let big = run(
        Job::decoalesce(
            &small_path,
            &options(Some(4), None, "strided", EmbeddingRule::Reference),
        ),
        &tmp.path().join("big"),
    );
    // Large unit u belongs to small unit u % 2 for [[0,2],[1,3]].
    let wte = values(&small, "transformer.wte.weight");
    let want: Vec<f64> = (0..3)
        .flat_map(|v| (0..4).map(move |u| (v, u)))
        .map(|(v, u)| wte[v * 2 + u % 2] / 2.0)
        .collect();
    assert_close(&values(&big, "transformer.wte.weight"), &want, "wte");
    let ln_f = values(&small, "transformer.ln_f.weight");
    let want: Vec<f64> = (0..4).map(|u| ln_f[u % 2]).collect();
    assert_close(&values(&big, "transformer.ln_f.weight"), &want, "ln_f");
    // c_proj [attn in 2, hidden out 2] -> [4, 4]: in split, out duplicated.
    let w = values(&small, "transformer.h.2.attn.c_proj.weight");
    let want: Vec<f64> = (0..4)
        .flat_map(|a| (0..4).map(move |b| (a, b)))
        .map(|(a, b)| w[(a % 2) * 2 + b % 2] / 2.0)
        .collect();
    assert_close(
        &values(&big, "transformer.h.2.attn.c_proj.weight"),
        &want,
        "c_proj",
    );
}

#[test]
fn depth_coalesce_averages_adjacent_or_strided_layers_and_decoalesce_copies() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let large = Checkpoint::open(&large_path).expect("open");
    let layer = |c: &Checkpoint, i: usize| values(c, &format!("transformer.h.{i}.ln_2.weight"));
    for (scheme, groups) in [
        ("adjacent", [[0, 1], [2, 3]]),
        ("strided", [[0, 2], [1, 3]]),
    ] {
        let out = tmp.path().join(format!("depth-{scheme}"));
        let small = run(
            Job::coalesce(
                &large_path,
                &options(None, Some(2), scheme, EmbeddingRule::Reference),
            ),
            &out,
        );
        for (i, g) in groups.iter().enumerate() {
            let (a, b) = (layer(&large, g[0]), layer(&large, g[1]));
            let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
            assert_close(&layer(&small, i), &want, &format!("{scheme} layer {i}"));
        }
        let big = run(
            Job::decoalesce(
                &out,
                &options(None, Some(4), scheme, EmbeddingRule::Reference),
            ),
            &tmp.path().join(format!("depth-{scheme}-big")),
        );
        for (i, g) in groups.iter().enumerate() {
            for &u in g {
                assert_eq!(
                    layer(&big, u),
                    layer(&small, i),
                    "{scheme}: large layer {u} copies {i}"
                );
            }
        }
    }
}

#[test]
fn three_layers_average_into_one_over_rows_longer_than_a_decoding_chunk() {
    let tmp = tempfile::tempdir().expect("tmp");
    // FFN 1200: the rows of c_fc ([hidden, ffn]) span several of the executor's decoding
    // chunks, which three layers (not the fused pair) are averaged by.
    let large_path = tmp.path().join("large");
    fixture::write_dir(&gpt2_spec(3, 1200, 5), &large_path).expect("fixture");
    let large = Checkpoint::open(&large_path).expect("open");
    let small = run(
        Job::coalesce(
            &large_path,
            &options(None, Some(1), "strided", EmbeddingRule::Exact),
        ),
        &tmp.path().join("small"),
    );
    let name = |i: usize| format!("transformer.h.{i}.mlp.c_fc.weight");
    let [a, b, c] = [0, 1, 2].map(|i| values(&large, &name(i)));
    // The shifted mean, first + ((0 + (b − first)) + (c − first)) / 3, rounded to f32.
    let want: Vec<f64> = (0..a.len())
        .map(|k| {
            let d = (0.0 + (b[k] - a[k])) + (c[k] - a[k]);
            f64::from((a[k] + d / 3.0) as f32)
        })
        .collect();
    let got = values(&small, &name(0));
    assert_eq!(got.len(), 4 * 1200);
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| g.to_bits() != w.to_bits());
    assert_eq!(differ.count(), 0, "bit for bit");
}

#[test]
fn interpolate_quarter_weights_the_decoalesced_model() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let small_path = tmp.path().join("small");
    let reference = options(Some(2), None, "strided", EmbeddingRule::Reference);
    run(Job::coalesce(&large_path, &reference), &small_path);
    let big_path = tmp.path().join("big");
    let big = run(
        Job::decoalesce(
            &small_path,
            &options(Some(4), None, "strided", EmbeddingRule::Reference),
        ),
        &big_path,
    );
    let large = Checkpoint::open(&large_path).expect("open");
    let mixed = run(
        Job::interpolate(&large_path, &big_path, 0.25, &Options::default()),
        &tmp.path().join("mixed"),
    );
    for name in [
        "transformer.wte.weight",
        "transformer.h.3.mlp.c_proj.weight",
        "transformer.ln_f.bias",
    ] {
        let (l, d) = (values(&large, name), values(&big, name));
        let want: Vec<f64> = l.iter().zip(&d).map(|(l, d)| 0.75 * l + 0.25 * d).collect();
        assert_close(&values(&mixed, name), &want, name);
    }
}

#[test]
fn only_sums_and_extrapolations_are_scanned_for_overflow() {
    let tmp = tempfile::tempdir().expect("tmp");
    let large_path = tiny_gpt2(tmp.path());
    let overflowing = |job: &Job| -> Vec<String> {
        let plan = job.plan();
        let names = plan.tensors.iter().filter(|t| job.may_overflow(t));
        names.map(|t| t.name.clone()).collect()
    };
    let reference = options(Some(2), None, "strided", EmbeddingRule::Reference);
    let coalesce = Job::coalesce(&large_path, &reference).expect("coalesce");
    let sums = overflowing(&coalesce);
    // The reference rule sums the embeddings' hidden axis and every `in` axis of width.
    assert!(
        sums.contains(&"transformer.wte.weight".to_string()),
        "{sums:?}"
    );
    assert!(
        sums.contains(&"transformer.h.0.attn.c_proj.weight".to_string()),
        "{sums:?}"
    );
    assert!(
        !sums.contains(&"transformer.ln_f.bias".to_string()),
        "{sums:?}"
    );

    let small_path = tmp.path().join("small");
    run(Ok(coalesce), &small_path);
    let wide = options(Some(4), None, "strided", EmbeddingRule::Reference);
    let decoalesce = Job::decoalesce(&small_path, &wide).expect("decoalesce");
    assert_eq!(overflowing(&decoalesce), Vec::<String>::new());
    let big_path = tmp.path().join("big");
    run(Ok(decoalesce), &big_path);

    let convex = Job::interpolate(&large_path, &big_path, 0.5, &Options::default());
    assert_eq!(overflowing(&convex.expect("α 0.5")), Vec::<String>::new());
    let range = AlphaRange::Extrapolate;
    let beyond = Job::interpolate_in(&large_path, &big_path, 1.5, range, &Options::default());
    let beyond = beyond.expect("α 1.5");
    assert_eq!(overflowing(&beyond).len(), beyond.plan().tensors.len());
}
