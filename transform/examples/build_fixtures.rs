//! Regenerates the committed fixtures: `cargo run -p vcycle-transform --example build_fixtures`.
//!
//! Tiny BertForMaskedLM and GPT2LMHeadModel checkpoint directories (4 layers, hidden 64,
//! 4 heads of 16, FFN 256, vocabulary 128, 64 positions) with seeded random weights whose norm
//! gains and biases are far from 1 and 0, built from the rule files themselves.

use std::path::PathBuf;

use anyhow::Result;
use vcycle_transform::fixture;

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for (name, spec) in [
        ("bert-tiny", fixture::bert_mlm(1)),
        ("gpt2-tiny", fixture::gpt2_lm(2)),
    ] {
        let dir = root.join(name);
        fixture::write_dir(&spec, &dir)?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}
