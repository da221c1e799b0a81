//! A user's rule file drives the same engine: `fixtures/custom/tinygpt.toml` describes an
//! in-house decoder whose checkpoint is GPT-2 renamed to other names and stored in nn.Linear's
//! [out, in] layout. Conversions, `inspect` and `verify` all work through `--rules`.

use std::path::Path;

use serde_json::json;
use vcycle_transform::verify::{compare, random_tokens, run_tokens};
use vcycle_transform::{ArchChoice, Rules, open_model};

use crate::util::{
    Sandbox, Tensor, Tensors, assert_mentions, assert_tensors_eq, fixtures_dir, load, save,
    write_json,
};

fn rules_path() -> String {
    fixtures_dir()
        .join("custom/tinygpt.toml")
        .to_string_lossy()
        .into_owned()
}

/// gpt2-tiny under tinygpt's names; Conv1D [in, out] weights transposed to [out, in].
fn write_tinygpt(dir: &Path) {
    let gpt2 = load(&fixtures_dir().join("gpt2-tiny"));
    let mut out = Tensors::new();
    for (name, tensor) in gpt2 {
        let base = name.trim_start_matches("transformer.");
        let renamed = base
            .replace("wte.", "tok.")
            .replace("wpe.", "pos.")
            .replace("h.", "blocks.")
            .replace(".ln_1.", ".norm1.")
            .replace(".ln_2.", ".norm2.")
            .replace(".attn.c_attn.", ".attn.qkv.")
            .replace(".attn.c_proj.", ".attn.out.")
            .replace(".mlp.c_fc.", ".ffn.up.")
            .replace(".mlp.c_proj.", ".ffn.down.")
            .replace("ln_f.", "final_norm.");
        let conv1d =
            name.ends_with(".weight") && (name.contains(".attn.c_") || name.contains(".mlp.c_"));
        let tensor = if conv1d { transpose(&tensor) } else { tensor };
        out.insert(format!("model.{renamed}"), tensor);
    }
    std::fs::create_dir_all(dir).expect("model directory");
    save(&dir.join("model.safetensors"), &out, None);
    write_json(
        &dir.join("config.json"),
        &json!({"model_type": "tinygpt", "d_model": 64, "n_layers": 4, "n_heads": 4, "d_ff": 256,
                "eps": 1e-5, "vocab_size": 128, "tie_word_embeddings": true}),
    );
}

fn transpose(t: &Tensor) -> Tensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let size = t.data.len() / (rows * cols);
    let mut data = vec![0u8; t.data.len()];
    for r in 0..rows {
        for c in 0..cols {
            let from = (r * cols + c) * size;
            let to = (c * rows + r) * size;
            data[to..to + size].copy_from_slice(&t.data[from..from + size]);
        }
    }
    Tensor {
        dtype: t.dtype,
        shape: vec![cols, rows],
        data,
    }
}

#[test]
fn a_custom_rule_file_drives_conversions_and_verify() {
    let sb = Sandbox::new();
    write_tinygpt(&sb.path("tinygpt"));
    let rules = rules_path();

    let inspect = sb.ok(["inspect", "tinygpt", "--rules", &rules]);
    for line in [
        "architecture: tinygpt",
        "hidden size:  64",
        "unplaced:     none",
    ] {
        assert!(inspect.stdout.contains(line), "{inspect}");
    }

    sb.ok([
        "coalesce", "tinygpt", "--rules", &rules, "--heads", "2", "--layers", "2", "-o", "small",
    ]);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sb.path("small/config.json")).expect("config"),
    )
    .expect("json");
    assert_eq!(
        (
            config["d_model"].as_u64(),
            config["n_heads"].as_u64(),
            config["d_ff"].as_u64()
        ),
        (Some(32), Some(2), Some(128))
    );
    sb.ok([
        "decoalesce",
        "small",
        "--rules",
        &rules,
        "--heads",
        "4",
        "--layers",
        "4",
        "-o",
        "regrown",
    ]);
    sb.ok([
        "coalesce", "regrown", "--rules", &rules, "--heads", "2", "--layers", "2", "-o", "again",
    ]);
    assert_tensors_eq(
        &load(&sb.path("again")),
        &load(&sb.path("small")),
        "tinygpt round trip",
    );

    // Width-only de-coalescing preserves the function through the user's [forward] section.
    sb.ok([
        "decoalesce",
        "small",
        "--rules",
        &rules,
        "--heads",
        "4",
        "-o",
        "wide",
    ]);
    let verify = sb.ok([
        "verify",
        "small",
        "wide",
        "--rules",
        &rules,
        "--max-rel",
        "1e-5",
    ]);
    assert!(verify.stdout.contains("relative:"), "{verify}");
}

#[test]
fn the_custom_model_computes_what_gpt2_computes() {
    let sb = Sandbox::new();
    write_tinygpt(&sb.path("tinygpt"));
    let rules = Rules::from_file(Path::new(&rules_path())).expect("rule file");
    let (custom, custom_anatomy) =
        open_model(&sb.path("tinygpt"), &ArchChoice::Rules(Box::new(rules))).expect("custom");
    let (gpt2, gpt2_anatomy) =
        open_model(&fixtures_dir().join("gpt2-tiny"), &ArchChoice::Detect).expect("gpt2");
    let ids = random_tokens(1, 2, 16, 128).expect("tokens");
    let a = run_tokens(&gpt2, &gpt2_anatomy, &ids).expect("gpt2 forward");
    let b = run_tokens(&custom, &custom_anatomy, &ids).expect("custom forward");
    let d = compare(&a, &b).expect("compare");
    assert!(d.max_abs <= 1e-6, "{d:?}");
}

#[test]
fn a_rule_file_with_an_unknown_key_is_refused_with_its_line() {
    let sb = Sandbox::new();
    write_tinygpt(&sb.path("tinygpt"));
    let text = std::fs::read_to_string(rules_path())
        .expect("rules")
        .replace(
            "role = \"embed.positions\"",
            "role = \"embed.positions\"\nscale = 2",
        );
    std::fs::write(sb.path("bad.toml"), text).expect("write");
    let run = sb.run(["inspect", "tinygpt", "--rules", "bad.toml"]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["bad.toml", "line", "scale"]);
}

#[test]
fn verify_names_the_role_a_rule_file_leaves_out() {
    let sb = Sandbox::new();
    write_tinygpt(&sb.path("tinygpt"));
    let rules = std::fs::read_to_string(rules_path()).expect("rule file");
    let without_o = rules.replace("role = \"attn.o.weight\"\n", "");
    assert_ne!(without_o, rules, "the rule file names attn.o.weight");
    std::fs::write(sb.path("no-o.toml"), without_o).expect("rule file");
    let run = sb.run(["verify", "tinygpt", "tinygpt", "--rules", "no-o.toml"]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["tinygpt", "role `attn.o.weight` in layer 0"]);
}
