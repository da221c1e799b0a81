//! Prints the "exact by construction" table of docs/exactness.md:
//! `cargo run --release -p vcycle-transform --example exactness_table`.
//!
//! For each bundled fixture, embedding rule and operator, the model is coalesced to the small
//! size, de-coalesced back, and the small model's logits are compared with the regrown
//! model's on seeded random input (relative error = mean |Δ| / mean |logit|).

use anyhow::Result;
use vcycle_transform::verify::decoalesce_difference;
use vcycle_transform::{DepthInit, EmbeddingRule, SchemeSpec, Target};

const FIXTURES: &[(&str, &str)] = &[
    ("BERT (post-LN, tied)", "bert-tiny"),
    ("GPT-2 (pre-LN, tied)", "gpt2-tiny"),
    ("Llama (RMSNorm, GQA 4q/2kv, untied)", "llama-tiny"),
    ("Llama (RMSNorm, GQA 4q/2kv, tied)", "llama-tied-tiny"),
    ("ViT (pre-LN, classifier)", "vit-tiny"),
];

fn main() -> Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let operators: [(&str, Target); 4] = [
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
        (
            "depth de-coalesce, `--depth-init zero` (2 → 4)",
            Target {
                layers: Some(2),
                depth_init: DepthInit::Zero,
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
                let rule = match rule {
                    EmbeddingRule::Exact => "exact",
                    EmbeddingRule::Reference => "reference",
                };
                // Groups of 4 heads do not exist with 2 key/value heads: say so, don't skip.
                let cell = match decoalesce_difference(&root.join(fixture), &target, work.path(), 0)
                {
                    Ok(m) => format!("{:.1e}", m.difference.relative),
                    Err(vcycle_transform::Error::Scheme { .. }) => "n/a (2 kv heads)".to_string(),
                    Err(vcycle_transform::Error::DepthInit { .. }) => {
                        "refused (post-LN)".to_string()
                    }
                    Err(e) => return Err(e.into()),
                };
                println!("| {label} | {rule} | {operator} | {cell} |");
            }
        }
    }
    Ok(())
}
