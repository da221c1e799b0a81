//! Corpus cases that attack the safetensors file itself: truncations, the header's length and
//! JSON, data offsets, byte lengths, duplicate names, dtypes, and weights that are not finite.

use safetensors::Dtype;
use serde_json::{Map, Value, json};

use super::{
    COALESCE, Case, Kind, LN, LN_BIAS, MLP, edit_header, edit_tensors, file_case, gpt2_bytes, join,
    poke, split,
};
use crate::util::encode;

/// The fixture's model file with its header edited as text.
fn edit_header_text(edit: impl FnOnce(String) -> String) -> Vec<u8> {
    let (header, data) = split(&gpt2_bytes());
    let edited = edit(header.clone());
    assert_ne!(edited, header, "the edit changed nothing");
    join(&edited, &data)
}

fn offsets(map: &Map<String, Value>, name: &str) -> (u64, u64) {
    let o = &map[name]["data_offsets"];
    (o[0].as_u64().expect("start"), o[1].as_u64().expect("end"))
}

/// The name of the tensor whose data comes last.
fn last_tensor(map: &Map<String, Value>) -> String {
    map.keys()
        .filter(|k| *k != "__metadata__")
        .max_by_key(|k| offsets(map, k).1)
        .expect("tensors")
        .clone()
}

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    let model = gpt2_bytes();

    // The file itself.
    let mut cases = vec![
        file_case(
            "truncated-in-the-data",
            Kind::Truncated,
            model[..model.len() - 100].to_vec(),
            &["not a valid safetensors file", "go beyond", "truncated"],
        ),
        file_case(
            "truncated-in-the-header",
            Kind::Truncated,
            model[..200].to_vec(),
            &["header length", "beyond the end of the file"],
        ),
        file_case(
            "shorter-than-the-length-field",
            Kind::Truncated,
            model[..5].to_vec(),
            &["5 bytes long", "too short"],
        ),
        file_case("empty-file", Kind::Truncated, Vec::new(), &["0 bytes long"]),
    ];
    let mut beyond = model.clone();
    beyond[..8].copy_from_slice(&(model.len() as u64).to_le_bytes());
    cases.push(file_case(
        "header-length-beyond-the-file",
        Kind::HeaderLength,
        beyond,
        &["header length", "beyond the end of the file"],
    ));
    let mut huge = model.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(file_case(
        "header-length-absurd",
        Kind::HeaderLength,
        huge,
        &["header length 18446744073709551615", "exceeds"],
    ));
    cases.push(file_case(
        "header-json-cut",
        Kind::HeaderJson,
        edit_header_text(|h| h.replacen(",", ";", 1)),
        &["not valid JSON"],
    ));
    cases.push(file_case(
        "header-not-an-object",
        Kind::HeaderJson,
        join("[1, 2, 3]", &[]),
        &["JSON list, not an object"],
    ));
    let mut not_utf8 = model.clone();
    not_utf8[20] = 0xff;
    cases.push(file_case(
        "header-not-utf8",
        Kind::HeaderJson,
        not_utf8,
        &["not UTF-8"],
    ));
    cases.push(file_case(
        "metadata-not-strings",
        Kind::HeaderJson,
        edit_header(|m| {
            m.insert("__metadata__".into(), json!({"format": 1}));
        }),
        &["`__metadata__` entry `format`", "not a string"],
    ));
    cases.push(file_case(
        "offsets-beyond-the-data",
        Kind::OffsetsOutOfBounds,
        edit_header(|m| {
            let last = last_tensor(m);
            let (s, e) = offsets(m, &last);
            m[&last]["data_offsets"] = json!([s + 8, e + 8]);
        }),
        &["data_offsets", "go beyond"],
    ));
    cases.push(file_case(
        "offsets-leave-a-gap",
        Kind::OffsetsOutOfBounds,
        edit_header(|m| {
            let last = last_tensor(m);
            let (ls, le) = offsets(m, &last);
            // Move the last tensor one element up inside a data region one element longer:
            // bytes between it and its predecessor belong to nobody.
            m[&last]["data_offsets"] = json!([ls + 4, le + 4]);
        })
        .into_iter()
        .chain([0u8; 4])
        .collect(),
        &["belong to no tensor"],
    ));
    cases.push(file_case(
        "offsets-overlap",
        Kind::OffsetsOverlap,
        edit_header(|m| {
            // The bias's data comes first: both now claim it, and the weight's is orphaned
            // after the overlap.
            let bias = m[LN_BIAS]["data_offsets"].clone();
            m[LN]["data_offsets"] = bias;
        }),
        &[LN, LN_BIAS, "overlap"],
    ));
    cases.push(file_case(
        "offsets-reversed",
        Kind::OffsetsOverlap,
        edit_header(|m| {
            let (s, e) = offsets(m, LN);
            m[LN]["data_offsets"] = json!([e, s]);
        }),
        &[LN, "end before they start"],
    ));
    cases.push(file_case(
        "byte-length-not-dtype-times-shape",
        Kind::ByteLength,
        edit_header(|m| m[LN]["shape"] = json!([65])),
        &[LN, "hold 256 bytes", "needs 260"],
    ));
    cases.push(file_case(
        "shape-overflows",
        Kind::ByteLength,
        edit_header(|m| m[LN]["shape"] = json!([4294967296u64, 4294967296u64, 16])),
        &[LN, "fits in memory"],
    ));
    cases.push(file_case(
        "duplicate-tensor-name",
        Kind::DuplicateName,
        edit_header_text(|h| h.replacen(&format!("\"{LN_BIAS}\""), &format!("\"{LN}\""), 1)),
        &[LN, "appears more than once"],
    ));
    cases.push(file_case(
        "unknown-dtype",
        Kind::UnknownDtype,
        edit_header(|m| m[LN]["dtype"] = json!("F31")),
        &[LN, "unknown dtype `F31`"],
    ));
    cases.push(file_case(
        "dtype-not-a-string",
        Kind::UnknownDtype,
        edit_header(|m| m[LN]["dtype"] = json!(32)),
        &[LN, "dtype is a JSON number"],
    ));

    // Weights that are not numbers: a warning by default (runner checks), refused by --strict.
    let mut strict = COALESCE.to_vec();
    strict.push("--strict");
    cases.push(
        Case::new(
            "nan-weight-strict",
            Kind::NonFinite,
            &strict,
            &[MLP, "1 NaN and 0 infinite", "element 7", "--strict"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| poke(t, MLP, 7, f64::NAN))),
        ),
    );
    cases.push(
        Case::new(
            "inf-weight-strict",
            Kind::NonFinite,
            &strict,
            &[LN, "0 NaN and 2 infinite", "element 3", "--strict"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| {
                poke(t, LN, 3, f64::INFINITY);
                poke(t, LN, 5, f64::NEG_INFINITY);
            })),
        ),
    );
    // Finite f16 weights whose sum (coalescing an `in` axis) overflows f16.
    cases.push(
        Case::new(
            "f16-overflow-strict",
            Kind::NonFinite,
            &strict,
            &["transformer.h.0.attn.c_proj.weight", "overflow", "--strict"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| {
                for tensor in t.values_mut() {
                    if tensor.is_float() {
                        let values = tensor.values();
                        tensor.data = encode(Dtype::F16, &values);
                        tensor.dtype = Dtype::F16;
                    }
                }
                // c_proj is [attn:in, hidden:out]: rows 0 and 32 (heads 0 and 2) are summed,
                // then columns 0 and 32 averaged: 2 × 60000 is beyond f16's 65504.
                let name = "transformer.h.0.attn.c_proj.weight";
                for index in [0, 32, 32 * 64, 32 * 64 + 32] {
                    poke(t, name, index, 60000.0);
                }
            })),
        ),
    );
    cases
}
