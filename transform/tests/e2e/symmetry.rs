//! `vcycle inspect --symmetry`: de-coalescing leaves duplicate neurons (and, with the `linalg`
//! feature, rank-deficient matrices); interpolating with the saved large model removes them.

use crate::util::{Sandbox, fixture};

fn total(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("total:"))
        .unwrap_or_else(|| panic!("no total line in {stdout}"))
}

#[test]
fn interpolation_removes_the_duplicates_de_coalescing_made() {
    let sb = Sandbox::new();
    let gpt2 = fixture("gpt2-tiny");
    sb.ok(["coalesce", &gpt2, "--heads", "2", "-o", "small"]);
    sb.ok(["decoalesce", "small", "--heads", "4", "-o", "decoalesced"]);
    sb.ok([
        "grow", "small", "--large", &gpt2, "--alpha", "0.5", "-o", "grown",
    ]);

    let decoalesced = sb.ok(["inspect", "--symmetry", "decoalesced"]).stdout;
    let grown = sb.ok(["inspect", "--symmetry", "grown"]).stdout;
    println!(
        "de-coalesced: {}\ngrown: {}",
        total(&decoalesced),
        total(&grown)
    );
    // Every GPT-2 matrix has a hidden, attention or FFN axis: all 18 hold duplicates.
    assert!(
        total(&decoalesced).contains("18 of 18 matrices hold duplicates"),
        "{decoalesced}"
    );
    assert!(
        decoalesced.contains(
            "transformer.h.0.attn.c_attn.weight [64, 192] (hidden:in, attn+attn+attn:out): duplicate rows 32/64, columns 96/192"
        ),
        "{decoalesced}"
    );
    assert!(
        total(&grown).contains("0 of 18 matrices hold duplicates (0 rows, 0 columns)"),
        "{grown}"
    );
    if cfg!(feature = "linalg") {
        assert!(
            total(&decoalesced).contains("18 of 18 are rank deficient"),
            "{decoalesced}"
        );
        assert!(decoalesced.contains("rank 32/64"), "{decoalesced}");
        assert!(
            total(&grown).contains("0 of 18 are rank deficient"),
            "{grown}"
        );
    } else {
        assert!(
            decoalesced.contains("rank: not computed; it needs the `linalg` feature"),
            "{decoalesced}"
        );
    }
}
