//! The corpus's second round (issue 21): checks that could not fail, paths written outside the
//! output rules, config values ignored, unbounded sizes, non-regular files, duplicate index
//! entries, a tensor claimed by two rules.

use serde_json::{Map, Value, json};

use super::{
    COALESCE, Case, Entry, Kind, MLP, edit_tensors, gpt2_bytes, gpt2_file_with_heads, join, poke,
    read, split,
};
use crate::util::fixtures_dir;

/// The bundled GPT-2 rule file with `extra` appended.
fn gpt2_rules(extra: &str) -> Entry {
    let path = fixtures_dir().join("../transform/rules/gpt2.toml");
    let mut text = String::from_utf8(read(&path)).expect("a UTF-8 rule file");
    text.push_str(extra);
    Entry::File(text.into_bytes())
}

/// Issue 21's classes: checks that could not fail, paths written outside the output rules,
/// config values ignored, unbounded sizes, non-regular files, duplicate index entries.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let nan_model = || edit_tensors(|t| poke(t, MLP, 7, f64::NAN));
    for (name, args) in [
        ("verify-nan-in-the-reference", ["verify", "nan", "in"]),
        ("verify-nan-in-the-other", ["verify", "in", "nan"]),
    ] {
        let mut args = args.to_vec();
        args.extend(["--max-rel", "1e-9"]);
        cases.push(
            Case::new(
                name,
                Kind::VerifyNonFinite,
                &args,
                &["nan", "NaN", "no difference"],
            )
            .with_fixture("gpt2-tiny", "in", None)
            .with_fixture("gpt2-tiny", "nan", Some(nan_model())),
        );
    }
    for (name, limit) in [
        ("verify-max-rel-nan", "NaN"),
        ("verify-max-rel-negative", "-1"),
    ] {
        cases.push(
            Case::new(
                name,
                Kind::VerifyNonFinite,
                &["verify", "in", "in", &format!("--max-rel={limit}")],
                &["--max-rel", "not a finite number >= 0"],
            )
            .with_fixture("gpt2-tiny", "in", None),
        );
    }

    // --plan-json and -o follow one policy.
    let plan = |name: &'static str, extra: &[&str], needles: &[&str]| {
        let mut args = COALESCE.to_vec();
        args.extend(extra);
        Case::new(name, Kind::OutputPolicy, &args, needles).with_fixture("gpt2-tiny", "in", None)
    };
    cases.push(plan(
        "plan-json-is-the-output",
        &["--plan-json", "out"],
        &["output out", "is the output out"],
    ));
    cases.push(plan(
        "plan-json-inside-the-output",
        &["--plan-json", "out/plan.json"],
        &["output out/plan.json", "inside the output out"],
    ));
    cases.push(
        plan(
            "plan-json-over-an-existing-file",
            &["--plan-json", "plan.json"],
            &["output plan.json", "already exists"],
        )
        .with("plan.json", Entry::File(b"keep me".to_vec())),
    );
    cases.push(plan(
        "plan-json-in-a-missing-directory",
        &["--plan-json", "missing/plan.json"],
        &["output missing/plan.json", "does not exist"],
    ));
    cases.push(
        plan(
            "plan-json-is-the-rules-file",
            &[
                "--rules",
                "rules.toml",
                "--plan-json",
                "rules.toml",
                "--force",
            ],
            &["output rules.toml", "is the input"],
        )
        .with("rules.toml", gpt2_rules("")),
    );
    cases.push(
        Case::new(
            "output-is-the-rules-file",
            Kind::OutputPolicy,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "--rules",
                "rules.toml",
                "-o",
                "rules.toml",
                "--force",
            ],
            &["output rules.toml", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads()))
        .with("rules.toml", gpt2_rules("")),
    );
    // A hub snapshot: the model's files are links into a blob store, which the output may not
    // replace.
    cases.push(
        Case::new(
            "output-replaces-the-blobs-an-input-links-to",
            Kind::SymlinkIntoInput,
            &[
                "coalesce",
                "snap/main",
                "--heads",
                "2",
                "-o",
                "snap/blobs",
                "--force",
            ],
            &["output snap/blobs", "contains the input"],
        )
        .with("snap/blobs", Entry::Dir)
        .with(
            "snap/blobs/config",
            Entry::File(read(&fixtures_dir().join("gpt2-tiny/config.json"))),
        )
        .with("snap/blobs/model", Entry::File(gpt2_bytes()))
        .with("snap/main", Entry::Dir)
        .with(
            "snap/main/config.json",
            Entry::Symlink("../blobs/config".into()),
        )
        .with(
            "snap/main/model.safetensors",
            Entry::Symlink("../blobs/model".into()),
        ),
    );

    // config.json values the rules read.
    for (name, key, value, needles) in [
        (
            "config-negative-hidden-size",
            "n_embd",
            json!(-64),
            &["`n_embd` = -64", "not a size"][..],
        ),
        (
            "config-layers-as-a-word",
            "n_layer",
            json!("four"),
            &["`n_layer` = \"four\"", "not a size"],
        ),
        (
            "config-negative-ffn-size",
            "n_inner",
            json!(-5),
            &["`n_inner` = -5", "not a size"],
        ),
        (
            "config-zero-heads",
            "n_head",
            json!(0),
            &["`n_head` = 0", "not a size"],
        ),
        (
            "config-vocab-size-disagrees",
            "vocab_size",
            json!(100),
            &["`vocab_size` = 100", "disagrees", "128"],
        ),
        (
            "config-positions-disagree",
            "n_positions",
            json!(1024),
            &["`n_positions` = 1024", "disagrees"],
        ),
        (
            "config-epsilon-not-a-number",
            "layer_norm_epsilon",
            json!("small"),
            &["`layer_norm_epsilon`", "not a positive number"],
        ),
    ] {
        cases.push(
            Case::new(name, Kind::ConfigValue, COALESCE, needles)
                .with_fixture("gpt2-tiny", "in", None)
                .with_config("in", |c| {
                    c[key] = value;
                }),
        );
    }

    // Sizes bounded up front.
    for (name, flag, value, needles) in [
        (
            "verify-batch-near-u64-max",
            "--batch",
            "18446744073709551615",
            &["--batch", "use a smaller batch or fewer tokens"][..],
        ),
        (
            "verify-batch-too-large",
            "--batch",
            "100000000",
            &["use a smaller batch or fewer tokens"],
        ),
        (
            "verify-seq-beyond-the-positions",
            "--seq",
            "100000",
            &["100000 tokens", "64 learned positions"],
        ),
        (
            "verify-batch-zero",
            "--batch",
            "0",
            &["--batch", "at least 1"],
        ),
    ] {
        cases.push(
            Case::new(
                name,
                Kind::Bounds,
                &["verify", "in", "in", flag, value],
                needles,
            )
            .with_fixture("gpt2-tiny", "in", None),
        );
    }
    cases.push(
        Case::new(
            "heads-zero",
            Kind::Bounds,
            &["coalesce", "in", "--heads", "0", "-o", "out"],
            &["--heads", "at least 1"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "shard-size-on-a-file",
            Kind::Bounds,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "--shard-size",
                "1MB",
                "-o",
                "out.safetensors",
            ],
            &["in/model.safetensors", "sharding needs a model directory"],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads())),
    );

    // Files that are not regular files.
    let fifo = |name: &'static str, args: &[&str], path: &str, needles: &[&str]| {
        Case::new(name, Kind::NonRegularFile, args, needles)
            .with_fixture("gpt2-tiny", "in", None)
            .with(path, Entry::Fifo)
    };
    cases.push(fifo(
        "config-json-is-a-fifo",
        &["inspect", "in"],
        "in/config.json",
        &["in/config.json", "not a regular file"],
    ));
    cases.push(fifo(
        "extra-file-is-a-fifo",
        COALESCE,
        "in/tokenizer.json",
        &["in/tokenizer.json", "not a regular file"],
    ));
    cases.push(fifo(
        "rules-file-is-a-fifo",
        &["inspect", "in", "--rules", "rules.toml"],
        "rules.toml",
        &["rules.toml", "not a regular file"],
    ));

    // A tensor listed twice in the index (serde's maps keep the last one silently).
    let (header, data) = split(&gpt2_bytes());
    let header: Map<String, Value> = serde_json::from_str(&header).expect("a JSON header");
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let mut index = String::from("{\"metadata\": {}, \"weight_map\": {");
    for name in &names {
        index.push_str(&format!("\"{name}\": \"model-1.safetensors\", "));
    }
    index.push_str(&format!("\"{}\": \"model-1.safetensors\"}}}}", names[0]));
    cases.push(
        Case::new(
            "index-lists-a-tensor-twice",
            Kind::IndexDuplicate,
            COALESCE,
            &["model.safetensors.index.json", names[0], "more than once"],
        )
        .with("in", Entry::Dir)
        .with(
            "in/config.json",
            Entry::File(read(&fixtures_dir().join("gpt2-tiny/config.json"))),
        )
        .with(
            "in/model-1.safetensors",
            Entry::File(join(&serde_json::to_string(&header).expect("JSON"), &data)),
        )
        .with(
            "in/model.safetensors.index.json",
            Entry::File(index.into_bytes()),
        ),
    );

    cases.push(
        Case::new(
            "rule-claims-a-tensor-twice",
            Kind::RuleClaimsTwice,
            &["inspect", "in", "--rules", "rules.toml"],
            &[
                "rules.toml",
                "transformer.h.0.ln_1.weight",
                "claimed by two rules",
            ],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with(
            "rules.toml",
            gpt2_rules("\n[[tensors]]\nname = \"h.0.ln_1.weight\"\naxes = [\"hidden:out\"]\n"),
        ),
    );
    cases
}
