//! Prints the `similar` vs `strided` table of docs/similar-groups.md:
//! `cargo run --release -p vcycle-transform --example similar_table [MINILM_DIR]`.
//!
//! For each bundled fixture (and all-MiniLM-L6-v2 when its directory is given), the model is
//! coalesced with each scheme, grown back to its own size with α = 1 (de-coalescing, with
//! `similar` groups recomputed from the original), and the original's outputs are compared
//! with the regrown model's on seeded random input: the lower the relative error, the more of
//! the function the merge kept. The merge cost is the criterion `similar` minimises.

use std::path::{Path, PathBuf};

use anyhow::Result;
use vcycle_transform::scheme::format_groups;
use vcycle_transform::{Job, Options, SchemeSpec, Target, open_model};

/// What one scheme gives: the groups that change (width, depth), their merge costs and the
/// relative error of the regrown model.
struct Outcome {
    groups: Vec<String>,
    costs: Vec<String>,
    relative: f64,
}

fn measure(model: &Path, target: &Target) -> Result<Outcome> {
    let work = tempfile::tempdir()?;
    let options = Options {
        target: target.clone(),
        ..Options::default()
    };
    let (small, grown) = (work.path().join("small"), work.path().join("grown"));
    let job = Job::coalesce(model, &options)?;
    let plan = job.plan();
    let mut groups = Vec::new();
    let mut costs = Vec::new();
    let width = plan.kv_head_groups.as_ref().or(plan.head_groups.as_ref());
    let width_label = if plan.kv_head_groups.is_some() {
        "kv heads"
    } else {
        "heads"
    };
    let sides = [
        (width_label, width, plan.similar_heads),
        ("layers", plan.layer_groups.as_ref(), plan.similar_layers),
    ];
    for (label, grouping, cost) in sides {
        if let Some(g) = grouping.filter(|g| !g.is_identity()) {
            groups.push(format!("{label} {}", format_groups(g.groups())));
            if let Some(c) = cost {
                costs.push(format!("{:.4e} / {:.4e}", c.chosen, c.strided));
            }
        }
    }
    job.write(&small, false)?;
    let back = Options {
        target: Target {
            heads: None,
            kv_heads: None,
            layers: None,
            ..target.clone()
        },
        ..Options::default()
    };
    Job::grow(&small, model, 1.0, &back)?.write(&grown, false)?;
    let (a, aa) = open_model(model, &back.arch)?;
    let (b, ab) = open_model(&grown, &back.arch)?;
    let v = vcycle_transform::verify::verify((&a, &aa), (&b, &ab), 0, 2, 16)?;
    Ok(Outcome {
        groups,
        costs,
        relative: v.difference.relative,
    })
}

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut models: Vec<(String, PathBuf, usize, usize)> = [
        ("BERT", "bert-tiny"),
        ("GPT-2", "gpt2-tiny"),
        ("Llama (GQA 4q/2kv)", "llama-tiny"),
        ("ViT", "vit-tiny"),
    ]
    .iter()
    .map(|(label, dir)| (label.to_string(), root.join(dir), 2, 2))
    .collect();
    if let Some(minilm) = std::env::args().nth(1) {
        models.push(("all-MiniLM-L6-v2".into(), PathBuf::from(minilm), 6, 3));
    }
    println!(
        "| model | merge | similar groups | strided groups | merge cost, similar / strided | relative error, similar / strided |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, path, heads, layers) in &models {
        let merges = [
            ("heads", Some(*heads), None),
            ("layers", None, Some(*layers)),
            ("both", Some(*heads), Some(*layers)),
        ];
        for (merge, h, l) in merges {
            let target = |scheme: SchemeSpec| Target {
                heads: h,
                layers: l,
                width_scheme: scheme.clone(),
                depth_scheme: scheme,
                ..Target::default()
            };
            let similar = measure(path, &target(SchemeSpec::Similar))?;
            let strided = measure(path, &target(SchemeSpec::Strided))?;
            println!(
                "| {label} | {merge} | {} | {} | {} | {:.3e} / {:.3e} |",
                similar.groups.join(", "),
                strided.groups.join(", "),
                similar.costs.join(", "),
                similar.relative,
                strided.relative
            );
        }
    }
    Ok(())
}
