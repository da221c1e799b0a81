//! Regenerates the committed fixtures: `cargo run -p vcycle-transform --example build_fixtures`.
//!
//! Tiny checkpoint directories built from the rule files themselves, with seeded random weights
//! whose norm gains and biases are far from 1 and 0: BertForMaskedLM and GPT2LMHeadModel
//! (4 layers, hidden 64, 4 heads of 16, FFN 256, vocabulary 128, 64 positions),
//! LlamaForCausalLM untied and tied (4 layers, hidden 64, 4 query / 2 key-value heads of 16,
//! FFN 176, vocabulary 128) and ViTForImageClassification (32×32 images, 8×8 patches, 4 layers,
//! hidden 64, 4 heads, FFN 256, 10 labels).

use std::path::PathBuf;

use anyhow::Result;
use vcycle_transform::fixture;

fn main() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for (name, spec) in [
        ("bert-tiny", fixture::bert_mlm(1)),
        ("gpt2-tiny", fixture::gpt2_lm(2)),
        ("llama-tiny", fixture::llama_lm(3, false)),
        ("llama-tied-tiny", fixture::llama_lm(4, true)),
        ("vit-tiny", fixture::vit_classifier(5)),
    ] {
        let dir = root.join(name);
        fixture::write_dir(&spec, &dir)?;
        println!("wrote {}", dir.display());
    }
    Ok(())
}
