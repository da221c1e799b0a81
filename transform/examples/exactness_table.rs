//! Prints the README's "exact by construction" table:
//! `cargo run --release -p vcycle-transform --example exactness_table`.
//!
//! For each bundled fixture, embedding rule and operator, the model is coalesced to the small
//! size, de-coalesced back, and the small model's logits are compared with the regrown
//! model's on seeded random input (relative error = mean |Δ| / mean |logit|).

use anyhow::Result;
use vcycle_transform::verify::decoalesce_difference;
use vcycle_transform::{EmbeddingRule, SchemeSpec, Target};

const FIXTURES: &[(&str, &str)] = &[
    ("BERT (post-LN, tied)", "bert-tiny"),
    ("GPT-2 (pre-LN, tied)", "gpt2-tiny"),
];

fn main() -> Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let operators: [(&str, Target); 3] = [
        (
            "width de-coalesce, groups of 2 (strided)",
            Target {
                heads: Some(2),
                ..Target::default()
            },
        ),
        (
            "width de-coalesce, groups of 4 (adjacent)",
            Target {
                heads: Some(1),
                width_scheme: SchemeSpec::Adjacent,
                ..Target::default()
            },
        ),
        (
            "depth de-coalesce, layer copies (2 → 4)",
            Target {
                layers: Some(2),
                ..Target::default()
            },
        ),
    ];
    println!("| model | embedding rule | operator | relative error |");
    println!("|---|---|---|---|");
    for (label, fixture) in FIXTURES {
        for rule in [EmbeddingRule::Exact, EmbeddingRule::Reference] {
            for (operator, target) in &operators {
                let target = Target {
                    embedding_rule: rule,
                    ..target.clone()
                };
                let work = tempfile::tempdir()?;
                let m = decoalesce_difference(&root.join(fixture), &target, work.path(), 0)?;
                let rule = match rule {
                    EmbeddingRule::Exact => "exact",
                    EmbeddingRule::Reference => "reference",
                };
                println!(
                    "| {label} | {rule} | {operator} | {:.1e} |",
                    m.difference.relative
                );
            }
        }
    }
    Ok(())
}
