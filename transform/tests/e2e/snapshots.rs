//! insta snapshots of `--dry-run` plans and of `inspect` for each fixture. Update with
//! `INSTA_UPDATE=always cargo test --test e2e` and review the `.snap` files.

use crate::util::{Run, Sandbox, fixture, fixtures_dir, run_in};

/// The plan printed by a dry run of `args` on a fixture.
fn plan(command: &str, name: &str, options: &[&str]) -> String {
    let sb = Sandbox::new();
    let input = fixture(name);
    let mut args = vec![command, input.as_str(), "--dry-run"];
    args.extend_from_slice(options);
    let run = sb.ok(&args);
    assert!(
        sb.entries().is_empty(),
        "--dry-run wrote {:?}",
        sb.entries()
    );
    assert!(
        !run.stdout.contains(input.as_str()),
        "the plan names no input path"
    );
    run.stdout
}

/// `inspect` run from the fixtures directory, so the report shows a relative path.
fn inspect(name: &str) -> Run {
    let run = run_in(&fixtures_dir(), ["inspect", name]);
    assert_eq!(run.code, 0, "{run}");
    run
}

#[test]
fn plan_coalesce_gpt2_heads2_layers2() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "gpt2-tiny",
        &["--heads", "2", "--layers", "2"]
    ));
}

#[test]
fn plan_coalesce_bert_heads2_layers2() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "bert-tiny",
        &["--heads", "2", "--layers", "2"]
    ));
}

#[test]
fn plan_decoalesce_gpt2_heads8_layers8_adjacent() {
    insta::assert_snapshot!(plan(
        "decoalesce",
        "gpt2-tiny",
        &[
            "--heads",
            "8",
            "--layers",
            "8",
            "--width-scheme",
            "adjacent"
        ]
    ));
}

#[test]
fn plan_coalesce_vit_heads2_layers2_similar() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "vit-tiny",
        &[
            "--heads",
            "2",
            "--layers",
            "2",
            "--width-scheme",
            "similar",
            "--depth-scheme",
            "similar"
        ]
    ));
}

#[test]
fn plan_coalesce_bert_heads2_reference_embeddings() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "bert-tiny",
        &["--embedding-rule", "reference", "--heads", "2"]
    ));
}

#[test]
fn inspect_gpt2() {
    insta::assert_snapshot!(inspect("gpt2-tiny").stdout);
}

#[test]
fn inspect_bert() {
    insta::assert_snapshot!(inspect("bert-tiny").stdout);
}

#[test]
fn plan_coalesce_llama_gqa_heads2_layers2() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "llama-tiny",
        &["--heads", "2", "--layers", "2"]
    ));
}

#[test]
fn plan_decoalesce_llama_tied_heads8() {
    insta::assert_snapshot!(plan("decoalesce", "llama-tied-tiny", &["--heads", "8"]));
}

#[test]
fn plan_coalesce_vit_heads2_adjacent() {
    insta::assert_snapshot!(plan(
        "coalesce",
        "vit-tiny",
        &["--heads", "2", "--width-scheme", "adjacent"]
    ));
}

#[test]
fn inspect_llama() {
    insta::assert_snapshot!(inspect("llama-tiny").stdout);
}

#[test]
fn inspect_llama_tied() {
    insta::assert_snapshot!(inspect("llama-tied-tiny").stdout);
}

#[test]
fn inspect_vit() {
    insta::assert_snapshot!(inspect("vit-tiny").stdout);
}
