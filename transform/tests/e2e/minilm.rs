//! A real checkpoint: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 12 heads of 32, an
//! int64 `embeddings.position_ids`, a pooler), fetched by `scripts/fetch-minilm.sh` into
//! `.local/minilm`. The tests run when that folder exists; `.ci/run` fetches it and sets
//! `VCYCLE_REQUIRE_MINILM=1`, which turns a missing folder into a failure.

use std::path::PathBuf;

use vcycle_transform::ops::{AxisOp, Gather};
use vcycle_transform::verify::{compare, random_tokens, run_tokens};
use vcycle_transform::{ArchChoice, Grouping, SchemeSpec, open_model};

use crate::util::{Sandbox, assert_tensors_eq, load, run_in};

fn minilm() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.local/minilm");
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("VCYCLE_REQUIRE_MINILM").is_none(),
        "VCYCLE_REQUIRE_MINILM is set but {} is missing: run scripts/fetch-minilm.sh",
        dir.display()
    );
    eprintln!(
        "skipped: {} is missing (scripts/fetch-minilm.sh fetches it)",
        dir.display()
    );
    None
}

#[test]
fn minilm_round_trips_bit_for_bit_in_width_and_depth() {
    let Some(model) = minilm() else { return };
    let sb = Sandbox::new();
    let model = model.to_string_lossy().into_owned();
    sb.ok([
        "coalesce", &model, "--heads", "6", "--layers", "3", "-o", "small",
    ]);
    sb.ok([
        "decoalesce",
        "small",
        "--heads",
        "12",
        "--layers",
        "6",
        "-o",
        "regrown",
    ]);
    // operator contract, property 1: coalesce(de-coalesce(θ)) = θ, here on the coalesced real model.
    sb.ok([
        "coalesce",
        "regrown",
        "--heads",
        "6",
        "--layers",
        "3",
        "-o",
        "small-again",
    ]);
    let small = load(&sb.path("small/model.safetensors"));
    let again = load(&sb.path("small-again/model.safetensors"));
    assert_tensors_eq(
        &again,
        &small,
        "MiniLM 12 -> 6 heads, 6 -> 3 layers, up and down again",
    );
    // The sentence-transformers files, subfolders included, travel with the model.
    for file in [
        "tokenizer.json",
        "vocab.txt",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(sb.path("regrown").join(file).is_file(), "{file} not copied");
    }
}

#[test]
fn minilm_width_decoalescing_preserves_hidden_states() {
    let Some(model) = minilm() else { return };
    let sb = Sandbox::new();
    let model = model.to_string_lossy().into_owned();
    sb.ok(["coalesce", &model, "--heads", "6", "-o", "small"]);
    sb.ok(["decoalesce", "small", "--heads", "12", "-o", "regrown"]);

    let arch = ArchChoice::Detect;
    let (small, small_anatomy) = open_model(&sb.path("small"), &arch).expect("small model");
    let (big, big_anatomy) = open_model(&sb.path("regrown"), &arch).expect("regrown model");
    let ids = random_tokens(3, 2, 16, 30522).expect("tokens");
    // BertModel has no head: compare final hidden states, the regrown ones averaged back over
    // the strided head grouping (12 -> 6 heads, blocks of 32 hidden units).
    let small_out = run_tokens(&small, &small_anatomy, &ids).expect("small forward");
    let big_out = run_tokens(&big, &big_anatomy, &ids).expect("regrown forward");
    assert_eq!(small_out.shape(), &[2, 16, 192]);
    assert_eq!(big_out.shape(), &[2, 16, 384]);
    let grouping = Grouping::new(&SchemeSpec::Strided, 12, 6, "head").expect("grouping");
    let mean = Gather::new(AxisOp::Mean, &grouping.expand(32));
    let big_values: Vec<f64> = big_out.iter().map(|&v| f64::from(v)).collect();
    let folded: Vec<f32> = mean
        .apply(&big_values, &[32, 384], 1)
        .expect("the hidden states have the gathered shape")
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let folded = ndarray::ArrayD::from_shape_vec(small_out.shape(), folded).expect("shape");
    let d = compare(&small_out, &folded).expect("compare");
    println!(
        "MiniLM 6 -> 12 heads: relative {:.2e}, max abs {:.2e}",
        d.relative, d.max_abs
    );
    assert!(d.relative <= 1e-5, "{d:?}");
    // The duplicated units must hold equal values, or averaging would hide a difference.
    let pairs = big_values.chunks(384).all(|row| {
        (0..6).all(|t| {
            (0..32).all(|r| {
                (row[t * 32 + r] - row[(t + 6) * 32 + r]).abs()
                    <= 1e-5 * row[t * 32 + r].abs().max(1.0)
            })
        })
    });
    assert!(
        pairs,
        "head blocks t and t + 6 of the regrown hidden states differ"
    );
}

#[test]
fn minilm_inspect() {
    let Some(model) = minilm() else { return };
    let root = model.parent().expect("parent").to_path_buf();
    let run = run_in(&root, ["inspect", "minilm"]);
    assert_eq!(run.code, 0, "{run}");
    insta::assert_snapshot!(run.stdout);
}
