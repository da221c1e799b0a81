//! `--shard-size`: HuggingFace-style shards with `model.safetensors.index.json`.

use std::collections::BTreeSet;

use crate::util::{
    Sandbox, assert_tensors_eq, entries, fixture, fixtures_dir, load, load_file, read_json,
};

/// Checks the shard files and the index of a sharded output directory whose shards hold at
/// most `limit` bytes of tensor data (or a single larger tensor); returns the largest shard's
/// data bytes.
fn check_sharded(dir: &std::path::Path, limit: usize) -> usize {
    let files = entries(dir);
    assert!(
        !files.iter().any(|f| f == "model.safetensors"),
        "a sharded output has no model.safetensors: {files:?}"
    );
    let shards: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    let total = shards.len();
    assert!(total > 1, "expected several shards, found {files:?}");
    for (i, shard) in shards.iter().enumerate() {
        assert_eq!(
            **shard,
            format!("model-{:05}-of-{total:05}.safetensors", i + 1),
            "shard names"
        );
    }

    let index = read_json(&dir.join("model.safetensors.index.json"));
    let weight_map = index["weight_map"]
        .as_object()
        .expect("the index has a weight_map object");
    let mut stored = BTreeSet::new();
    let mut total_size = 0usize;
    let mut largest = 0usize;
    for shard in &shards {
        let (tensors, _) = load_file(&dir.join(shard));
        let bytes: usize = tensors.values().map(|t| t.data.len()).sum();
        assert!(
            bytes <= limit || tensors.len() == 1,
            "{shard} holds {bytes} bytes in {} tensors, over the {limit} limit",
            tensors.len()
        );
        total_size += bytes;
        largest = largest.max(bytes);
        for name in tensors.keys() {
            assert_eq!(
                weight_map.get(name).and_then(|v| v.as_str()),
                Some(shard.as_str()),
                "weight_map entry of {name}"
            );
            stored.insert(name.clone());
        }
    }
    let mapped: BTreeSet<String> = weight_map.keys().cloned().collect();
    assert_eq!(
        mapped, stored,
        "weight_map names = tensors stored in the shards"
    );
    assert_eq!(
        index["metadata"]["total_size"].as_u64(),
        Some(total_size as u64),
        "metadata.total_size"
    );
    largest
}

#[test]
fn shard_size_writes_shards_and_a_complete_index() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    sb.ok([
        "decoalesce",
        input.as_str(),
        "--heads",
        "8",
        "--shard-size",
        "100KB",
        "-o",
        "sharded",
    ]);
    sb.ok(["decoalesce", input.as_str(), "--heads", "8", "-o", "single"]);
    check_sharded(&sb.path("sharded"), 100_000);
    assert!(sb.path("sharded/config.json").is_file());
    assert_tensors_eq(
        &load(&sb.path("sharded")),
        &load(&sb.path("single")),
        "sharded vs single-file output",
    );
}

#[test]
fn a_sharded_input_stays_sharded() {
    let sb = Sandbox::new();
    let input = fixture("bert-tiny");
    sb.ok([
        "decoalesce",
        input.as_str(),
        "--heads",
        "8",
        "--layers",
        "8",
        "--shard-size",
        "100KB",
        "-o",
        "sharded",
    ]);
    let largest = check_sharded(&sb.path("sharded"), 100_000);
    // No --shard-size: the output keeps the input's form, with its largest shard as limit.
    sb.ok([
        "coalesce", "sharded", "--heads", "4", "--layers", "4", "-o", "back",
    ]);
    check_sharded(&sb.path("back"), largest);
    // The same conversion from a single-file input, for comparison.
    sb.ok([
        "decoalesce",
        input.as_str(),
        "--heads",
        "8",
        "--layers",
        "8",
        "-o",
        "single",
    ]);
    sb.ok([
        "coalesce",
        "single",
        "--heads",
        "4",
        "--layers",
        "4",
        "-o",
        "single-back",
    ]);
    let back = load(&sb.path("back"));
    assert_tensors_eq(&back, &load(&sb.path("single-back")), "sharded vs single");
    assert_tensors_eq(
        &back,
        &load(&fixtures_dir().join("bert-tiny")),
        "sharded round trip",
    );
}

#[test]
fn an_index_that_disagrees_with_its_shards_is_refused() {
    let sb = Sandbox::new();
    sb.ok([
        "coalesce",
        &fixture("gpt2-tiny"),
        "--heads",
        "2",
        "--shard-size",
        "100KB",
        "-o",
        "sharded",
    ]);
    let index_path = sb.path("sharded/model.safetensors.index.json");
    let index = read_json(&index_path);
    let name = "transformer.wte.weight";
    let stored = index["weight_map"][name]
        .as_str()
        .expect("wte listed")
        .to_string();
    let other = index["weight_map"]
        .as_object()
        .expect("map")
        .values()
        .filter_map(|v| v.as_str())
        .find(|f| *f != stored)
        .expect("a second shard")
        .to_string();
    let cases = [
        ("moved", serde_json::Value::from(other), "is listed in"),
        (
            "missing",
            serde_json::Value::Null,
            "missing from weight_map",
        ),
    ];
    for (what, entry, message) in cases {
        let mut broken = index.clone();
        let map = broken["weight_map"].as_object_mut().expect("map");
        if entry.is_null() {
            map.remove(name);
        } else {
            map.insert(name.into(), entry);
        }
        crate::util::write_json(&index_path, &broken);
        let run = sb.run(["inspect", "sharded"]);
        assert_eq!(run.code, 2, "{what}: {run}");
        crate::util::assert_mentions(&run, &[name, message, "model.safetensors.index.json"]);
    }
}
