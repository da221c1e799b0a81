//! Corpus cases whose files are well formed but do not make the model they claim: missing or
//! extra tensors, sizes the scheme cannot split, a config.json that disagrees with the tensors,
//! and checkpoints to interpolate that do not match.

use safetensors::Dtype;
use serde_json::json;

use super::{COALESCE, Case, Entry, Kind, LN, MLP, edit_tensors, file_case};
use crate::util::encode;

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // The tensors do not make the model.
    // A missing tensor is missing from the model (the directory), not from one file.
    cases.push(
        Case::new(
            "missing-tensor",
            Kind::MissingTensor,
            COALESCE,
            &["in: required tensor", MLP, "missing"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| {
                t.remove(MLP);
            })),
        ),
    );
    cases.push(
        Case::new(
            "missing-layer",
            Kind::MissingTensor,
            COALESCE,
            &["in: layer 1 is missing"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| {
                t.retain(|name, _| !name.starts_with("transformer.h.1."))
            })),
        ),
    );
    cases.push(file_case(
        "extra-tensor",
        Kind::ExtraTensor,
        edit_tensors(|t| {
            let extra = t[LN].clone();
            t.insert("transformer.h.1.adapter.scale".into(), extra);
        }),
        &["transformer.h.1.adapter.scale", "not claimed"],
    ));
    cases.push(file_case(
        "tensor-of-wrong-rank",
        Kind::ExtraTensor,
        edit_tensors(|t| {
            let ln = t.get_mut(LN).expect("ln");
            ln.shape = vec![8, 8];
        }),
        &[LN, "[8, 8]", "declares 1 axes"],
    ));

    // Sizes the scheme cannot split.
    cases.push(
        Case::new(
            "heads-not-divisible",
            Kind::NotDivisible,
            &["coalesce", "in", "--heads", "3", "-o", "out"],
            &["4 head units", "3 equal groups"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "layers-not-divisible",
            Kind::NotDivisible,
            &["coalesce", "in", "--layers", "3", "-o", "out"],
            &["4 layer units", "3 equal groups"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "hidden-not-a-multiple-of-heads",
            Kind::NotDivisible,
            COALESCE,
            &["in/config.json", "3 heads", "attention width 64"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with_config("in", |c| c["n_head"] = json!(3)),
    );
    cases.push(
        Case::new(
            "absurd-head-count",
            Kind::NotDivisible,
            &["decoalesce", "in", "--heads", "1000000", "-o", "out"],
            &["1000000 heads", "65536"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );

    // config.json against the tensors.
    cases.push(
        Case::new(
            "config-hidden-disagrees",
            Kind::ConfigDisagrees,
            COALESCE,
            &["in/config.json", "`n_embd` = 32", "64"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with_config("in", |c| c["n_embd"] = json!(32)),
    );
    cases.push(
        Case::new(
            "config-layers-disagree",
            Kind::ConfigDisagrees,
            COALESCE,
            &["in/config.json", "`n_layer` = 6", "4"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with_config("in", |c| c["n_layer"] = json!(6)),
    );
    cases.push(
        Case::new(
            "config-not-json",
            Kind::ConfigDisagrees,
            COALESCE,
            &["in/config.json", "invalid JSON"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("in/config.json", Entry::File(b"{\"n_embd\": 64,".to_vec())),
    );
    cases.push(
        Case::new(
            "config-not-an-object",
            Kind::ConfigDisagrees,
            COALESCE,
            &["in/config.json", "not a JSON object"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("in/config.json", Entry::File(b"[64, 4]".to_vec())),
    );

    // Interpolation of checkpoints that do not match.
    let interpolate = ["interpolate", "in", "other", "--alpha", "0.5", "-o", "out"];
    let other = |name: &'static str, bytes: Vec<u8>, needles: &[&str]| {
        Case::new(name, Kind::InterpolateMismatch, &interpolate, needles)
            .with_fixture("gpt2-tiny", "in", None)
            .with_fixture("gpt2-tiny", "other", Some(bytes))
    };
    cases.push(other(
        "interpolate-names-differ",
        edit_tensors(|t| {
            let ln = t.remove(LN).expect("ln");
            t.insert("transformer.h.1.ln_1.gamma".into(), ln);
        }),
        &["transformer.h.1.ln_1.gamma", "present in", "other"],
    ));
    cases.push(other(
        "interpolate-shapes-differ",
        edit_tensors(|t| {
            let ln = t.get_mut(LN).expect("ln");
            ln.shape = vec![32, 2];
        }),
        &[LN, "[64]", "[32, 2]"],
    ));
    cases.push(other(
        "interpolate-dtypes-differ",
        edit_tensors(|t| {
            let ln = t.get_mut(LN).expect("ln");
            let values = ln.values();
            ln.data = encode(Dtype::F16, &values);
            ln.dtype = Dtype::F16;
        }),
        &[LN, "F32", "F16"],
    ));
    cases
}
