//! Fuzz targets over vcycle's parsers of untrusted input, as plain functions: the cargo-fuzz
//! binaries (`fuzz_targets/`) call them on libFuzzer's inputs, and `tests/seeds.rs` calls
//! them on the committed seed corpus and random mutations of it, on stable Rust.
//!
//! A target returns normally for any input, accepted or refused; a panic (including an
//! arithmetic overflow, since the fuzz build keeps overflow checks) or an abort is the bug.
//! Accepted inputs are pushed through everything a user's command would do with them:
//! claiming, sizing, planning every conversion, computing every tensor, `inspect`, and
//! `verify`'s forward pass (with sizes up to `usize::MAX`, as `--batch` and `--seq` take them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use safetensors::{Dtype, SafeTensors};
use vcycle_transform::anatomy::{Anatomy, ArchChoice, Dims, EmbeddingRule};
use vcycle_transform::execute::{self, Inputs};
use vcycle_transform::fixture::{self, FixtureSpec};
use vcycle_transform::plan::{self, AlphaRange, DepthInit, Plan, Target};
use vcycle_transform::scheme::{Grouping, SchemeSpec};
use vcycle_transform::{Checkpoint, Rules, read};

/// The architectures of the tiny models the config and rules targets pair their input with.
pub const ARCHS: [&str; 4] = ["gpt2", "bert", "llama", "vit"];

/// A tiny model of one architecture.
pub struct Tiny {
    pub arch: &'static str,
    /// The safetensors file, with vcycle's size metadata (convertible without config.json).
    pub file: Vec<u8>,
    /// The same tensors without metadata (sizes must come from config.json).
    pub bare: Vec<u8>,
    /// Its config.json.
    pub config: Vec<u8>,
}

fn spec(arch: &'static str) -> FixtureSpec {
    let fixed = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    let dims = |heads, kv_heads, fixed| Dims {
        layers: 1,
        hidden: 8,
        heads,
        kv_heads,
        head_dim: 4,
        ffn: 16,
        tied: arch != "vit",
        fixed,
    };
    let (dims, optional) = match arch {
        "bert" => (
            dims(
                2,
                2,
                fixed(&[("vocab", 5), ("positions", 6), ("token_types", 2)]),
            ),
            vec![
                "cls.predictions.transform.dense.weight",
                "cls.predictions.bias",
            ],
        ),
        "llama" => (dims(2, 1, fixed(&[("vocab", 5), ("positions", 6)])), vec![]),
        "vit" => (
            dims(
                2,
                2,
                fixed(&[
                    ("channels", 1),
                    ("patch", 2),
                    ("positions", 5),
                    ("labels", 3),
                    ("image_size", 4),
                ]),
            ),
            vec!["classifier.weight", "classifier.bias"],
        ),
        _ => (dims(2, 2, fixed(&[("vocab", 5), ("positions", 6)])), vec![]),
    };
    FixtureSpec {
        arch: arch.into(),
        dims,
        optional: optional.into_iter().map(String::from).collect(),
        arange: Vec::new(),
        dtype: Dtype::F32,
        seed: 7,
    }
}

fn tiny(arch: &'static str) -> Tiny {
    let spec = spec(arch);
    let tensors = fixture::build(&spec).expect("a tiny fixture builds");
    let d = &spec.dims;
    let metadata = [
        ("format", "pt".to_string()),
        ("vcycle.arch", arch.to_string()),
        ("vcycle.heads", d.heads.to_string()),
        ("vcycle.kv_heads", d.kv_heads.to_string()),
        ("vcycle.head_dim", d.head_dim.to_string()),
        ("vcycle.tied", d.tied.to_string()),
    ];
    let file = serialize(&tensors, &metadata);
    let bare = serialize(&tensors, &[]);
    let config =
        serde_json::to_vec_pretty(&fixture::config(&spec).expect("a config")).expect("serialises");
    Tiny {
        arch,
        file,
        bare,
        config,
    }
}

/// A safetensors file, deterministically: metadata and tensors in the order given.
fn serialize(tensors: &[fixture::FixtureTensor], metadata: &[(&str, String)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let meta: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect();
        header.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": vcycle_transform::dtype::name(t.dtype),
                "shape": t.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&header).expect("serialises");
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    bytes
}

/// The tiny models, built once per process.
pub fn tiny_models() -> &'static [Tiny] {
    static MODELS: OnceLock<Vec<Tiny>> = OnceLock::new();
    MODELS.get_or_init(|| ARCHS.into_iter().map(tiny).collect())
}

/// A scratch directory private to this process and thread (libFuzzer's -jobs/-fork run
/// several processes, the test harness several threads). Files mapped by one run must never
/// be rewritten by another while mapped: truncating a mapped file is a SIGBUS.
fn scratch() -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let thread = format!("{:?}", std::thread::current().id())
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>();
            let dir = std::env::temp_dir()
                .join(format!("vcycle-fuzz-{}-{thread}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a scratch directory");
            dir
        };
    }
    DIR.with(PathBuf::clone)
}

/// Target `header`: a whole safetensors file. The header parser must agree with the
/// `safetensors` crate (except that it refuses repeated names, which that crate collapses);
/// an accepted file goes through the whole pipeline.
pub fn header(data: &[u8]) {
    let ours = read::parse_header(data);
    match (&ours, SafeTensors::read_metadata(data)) {
        (Ok(h), Ok((n, meta))) => {
            assert_eq!(h.header_len, n);
            let mut theirs: Vec<_> = meta
                .tensors()
                .into_iter()
                .map(|(name, i)| (name, i.dtype, i.shape.clone(), i.data_offsets))
                .collect();
            let mut ours: Vec<_> = h
                .tensors
                .iter()
                .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data_offsets))
                .collect();
            theirs.sort();
            ours.sort();
            assert_eq!(ours, theirs);
        }
        (Ok(h), Err(e)) => panic!("accepted what safetensors refuses ({e}): {h:?}"),
        (Err(e), Ok(_)) => assert!(e.contains("more than once"), "refused a valid file: {e}"),
        (Err(_), Err(_)) => {}
    }
    if ours.is_err() {
        return;
    }
    let path = scratch().join("header.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let checkpoint = Checkpoint::open(&path).expect("a file parse_header accepts opens");
    exercise(&checkpoint, &ArchChoice::Detect, data.len() as u8);
}

/// Target `config`: byte 0 picks a tiny model, the rest is its config.json.
pub fn config(data: &[u8]) {
    let Some((&pick, config)) = data.split_first() else {
        return;
    };
    let models = tiny_models();
    let tiny = &models[usize::from(pick) % models.len()];
    let dir = scratch().join(format!("config-{}", tiny.arch));
    let model = dir.join(read::SINGLE_FILE);
    if !model.exists() {
        std::fs::create_dir_all(&dir).expect("a model directory");
        std::fs::write(&model, &tiny.bare).expect("the model file");
    }
    std::fs::write(dir.join(read::CONFIG_FILE), config).expect("config.json");
    let Ok(checkpoint) = Checkpoint::open(&dir) else {
        return;
    };
    let variant = pick >> 2;
    exercise(&checkpoint, &ArchChoice::Detect, variant);
    exercise(
        &checkpoint,
        &ArchChoice::Preset(tiny.arch.to_string()),
        variant >> 2,
    );
}

/// The tiny model files (with size metadata), written and opened once per process.
fn tiny_checkpoints() -> &'static [Checkpoint] {
    static OPENED: OnceLock<Vec<Checkpoint>> = OnceLock::new();
    OPENED.get_or_init(|| {
        let dir = scratch().join("models");
        std::fs::create_dir_all(&dir).expect("a models directory");
        tiny_models()
            .iter()
            .map(|t| {
                let path = dir.join(format!("{}.safetensors", t.arch));
                std::fs::write(&path, &t.file).expect("a model file");
                Checkpoint::open(&path).expect("a tiny model opens")
            })
            .collect()
    })
}

/// Target `rules`: a rule file (TOML). An accepted one is used on every tiny model.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = Rules::parse(text, "fuzz.toml") else {
        return;
    };
    let choice = ArchChoice::Rules(Box::new(rules));
    for checkpoint in tiny_checkpoints() {
        exercise(checkpoint, &choice, data.len() as u8);
    }
}

/// Target `scheme`: two little-endian u16 sizes, a block size, then `--width-scheme` text.
/// An accepted grouping must be a partition that its expansions, induced query grouping,
/// gathers and printed form all preserve.
pub fn scheme(data: &[u8]) {
    let [l0, l1, s0, s1, block, rest @ ..] = data else {
        return;
    };
    let large = usize::from(u16::from_le_bytes([*l0, *l1])) % 2049;
    let small = usize::from(u16::from_le_bytes([*s0, *s1])) % 2049;
    let block = usize::from(*block % 8);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(spec) = text.parse::<SchemeSpec>() else {
        return;
    };
    let Ok(grouping) = Grouping::new(&spec, large, small, "head") else {
        return;
    };
    check_partition(&grouping, large, small);
    let printed = vcycle_transform::scheme::format_groups(grouping.groups());
    assert_eq!(
        printed.parse::<SchemeSpec>(),
        Ok(SchemeSpec::Explicit(grouping.groups().to_vec()))
    );
    check_partition(&grouping.expand(block), large * block, small * block);
    check_partition(
        &grouping.induce_queries(block),
        large * block,
        small * block,
    );
    use vcycle_transform::ops::{AxisOp, Gather};
    let data: Vec<f64> = (0..2 * large).map(|i| i as f64).collect();
    for op in [AxisOp::Mean, AxisOp::Sum] {
        let out = Gather::new(op, &grouping).apply(&data, &[2, large], 1);
        assert_eq!(out.map(|o| o.len()), Ok(2 * small));
    }
    let small_data: Vec<f64> = (0..2 * small).map(|i| i as f64).collect();
    for op in [AxisOp::Duplicate, AxisOp::Split] {
        let out = Gather::new(op, &grouping).apply(&small_data, &[2, small], 1);
        assert_eq!(out.map(|o| o.len()), Ok(2 * large));
    }
}

fn check_partition(g: &Grouping, large: usize, small: usize) {
    assert_eq!((g.large(), g.small()), (large, small));
    let mut seen = vec![false; large];
    for (i, group) in g.groups().iter().enumerate() {
        for &u in group {
            assert!(!seen[u], "unit {u} twice");
            seen[u] = true;
            assert_eq!(g.owner(u), i);
        }
    }
    assert!(seen.into_iter().all(|s| s), "a unit in no group");
}

/// Everything a command does with an accepted checkpoint; errors are fine. `variant` picks
/// the schemes, embedding rule and depth initialisation (trying all of them on every input would be slower than
/// letting the fuzzer's inputs pick).
pub fn exercise(checkpoint: &Checkpoint, arch: &ArchChoice, variant: u8) {
    let Ok(anatomy) = Anatomy::analyze(checkpoint, arch) else {
        return;
    };
    let _ = vcycle_transform::inspect::report(checkpoint.path(), checkpoint, &anatomy);
    if anatomy.require_complete(checkpoint).is_err() {
        return;
    }
    let d = anatomy.dims.clone();
    let sizes = [
        (Some(d.heads / 2), Some(d.layers / 2), true),
        (
            Some(d.heads.saturating_mul(2)),
            Some(d.layers.saturating_mul(2)),
            false,
        ),
        (None, None, true),
    ];
    let scheme = match variant & 9 {
        0 => SchemeSpec::Strided,
        1 => SchemeSpec::Adjacent,
        _ => SchemeSpec::Similar,
    };
    let embedding_rule = if variant & 2 == 0 {
        EmbeddingRule::Exact
    } else {
        EmbeddingRule::Reference
    };
    for (heads, layers, coalescing) in sizes {
        let target = Target {
            heads,
            kv_heads: None,
            layers,
            width_scheme: scheme.clone(),
            depth_scheme: scheme.clone(),
            embedding_rule,
            depth_init: if variant & 4 == 0 {
                DepthInit::Copy
            } else {
                DepthInit::Zero
            },
        };
        if let Ok(plan) = plan::plan_resize(checkpoint, &anatomy, &target, coalescing) {
            if let (Some(config), Some(to)) = (checkpoint.config(), &plan.to) {
                let _ = vcycle_transform::config::rewrite(config, &anatomy.rules.config, to);
            }
            run_plan(&plan, checkpoint, None);
        }
    }
    if let Ok(plan) = plan::plan_interpolate(checkpoint, checkpoint, 0.25, AlphaRange::Interpolate)
    {
        run_plan(&plan, checkpoint, Some(checkpoint));
    }
    let model = (checkpoint, &anatomy);
    let _ = vcycle_transform::verify::verify(model, model, 0, 1, 3);
    // `verify --batch/--seq` as a user may pass them: bounded before anything is allocated,
    // so each is refused (or runs) without an overflow or an aborting allocation.
    let (huge, big) = (usize::MAX, 1 << 40);
    for (batch, seq) in [(huge, 3), (1, huge), (huge, huge), (big, 3), (1, big), (0, 3)] {
        let _ = vcycle_transform::verify::verify(model, model, 0, batch, seq);
    }
}

/// Prints a plan and computes each tensor; a computed tensor has exactly its planned bytes.
fn run_plan(plan: &Plan, primary: &Checkpoint, large: Option<&Checkpoint>) {
    let _ = plan.to_string();
    let _ = serde_json::to_string(plan);
    let inputs = Inputs { primary, large };
    let executor = execute::Executor::new(plan);
    for t in &plan.tensors {
        let mut bytes = Vec::new();
        let streamed = executor.stream(t, inputs, &mut |block| {
            bytes.extend_from_slice(block.bytes());
            Ok(())
        });
        if streamed.is_ok() {
            assert_eq!(
                Some(bytes.len()),
                vcycle_transform::dtype::byte_len(t.dtype, &t.shape),
                "tensor {} computed with the wrong size",
                t.name
            );
        }
    }
}

/// The seed corpus: (target, file name, bytes). Written by `examples/make_seeds.rs` into
/// `corpus/<target>/`, and checked by `tests/seeds.rs`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for tiny in tiny_models() {
        out.push(("header", format!("seed-{}", tiny.arch), tiny.file.clone()));
        let index = ARCHS.iter().position(|a| *a == tiny.arch).unwrap_or(0) as u8;
        let mut config = vec![index];
        config.extend_from_slice(&tiny.config);
        out.push(("config", format!("seed-{}", tiny.arch), config));
    }
    for (name, text) in vcycle_transform::rules::PRESETS {
        out.push(("rules", format!("seed-{name}"), text.as_bytes().to_vec()));
    }
    let schemes: [(&str, u16, u16, &str); 4] = [
        ("strided", 8, 4, "strided"),
        ("adjacent", 6, 3, "adjacent"),
        ("explicit", 4, 2, "[[0,3],[1,2]]"),
        ("unequal", 5, 2, "[[0,1,2],[3,4]]"),
    ];
    for (name, large, small, text) in schemes {
        let mut bytes = large.to_le_bytes().to_vec();
        bytes.extend_from_slice(&small.to_le_bytes());
        bytes.push(3);
        bytes.extend_from_slice(text.as_bytes());
        out.push(("scheme", format!("seed-{name}"), bytes));
    }
    out
}
