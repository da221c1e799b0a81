//! The safetensors header parser: every malformation is an error naming the tensor and the
//! field, never a panic, and it agrees with the `safetensors` crate on everything but repeated
//! names (which that crate silently collapses).

use proptest::prelude::*;
use safetensors::{Dtype, SafeTensors};

use super::{Header, parse_header};

/// A file from a header text and `data_len` bytes of data.
fn file(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..data_len).map(|i| i as u8));
    bytes
}

fn error(bytes: &[u8]) -> String {
    match parse_header(bytes) {
        Ok(h) => panic!("accepted: {h:?}"),
        Err(e) => e,
    }
}

const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}"#;

#[test]
fn a_good_header_is_read_in_order_with_its_metadata() {
    let h = parse_header(&file(GOOD, 16)).unwrap();
    assert_eq!(h.header_len, GOOD.len());
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(h.tensors[1].dtype, Dtype::F16);
    assert_eq!(h.tensors[1].shape, [2, 2]);
    assert_eq!(h.tensors[1].data_offsets, (0, 8));
}

#[test]
fn every_malformation_is_named() {
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (vec![1, 2, 3], &["3 bytes long", "too short"]),
        (
            file(GOOD, 16)[..40].to_vec(),
            &["header length", "beyond the end of the file"],
        ),
        (
            {
                let mut b = file(GOOD, 16);
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            },
            &["header length", "exceeds"],
        ),
        (file("{\"a\": ", 0), &["not valid JSON"]),
        (file("[1, 2]", 0), &["JSON list, not an object"]),
        (
            {
                let mut b = file(
                    r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    4,
                );
                b[12] = 0xff;
                b
            },
            &["not UTF-8"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a` appears more than once"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "`dtype` appears more than once"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "unknown dtype `F12`"],
        ),
        (
            file(r#"{"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}"#, 4),
            &["tensor `a`", "dtype is a JSON number"],
        ),
        (
            file(r#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#, 4),
            &["tensor `a` has no `dtype`"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "shape holds -1"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "shape holds 1.5"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "shape is a JSON string"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,
                4,
            ),
            &["tensor `a`", "3 numbers, not 2"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
                4,
            ),
            &["tensor `a`", "end before they start"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "hold 4 bytes", "needs 8"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                4,
            ),
            &["tensor `a`", "fits in memory"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#,
                1,
            ),
            &["tensor `a`", "whole number of bytes"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                4,
            ),
            &["tensor `a`", "go beyond the 4 bytes of data", "truncated"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            &["`a`", "`b`", "overlap"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
            ),
            &["bytes 0..4", "before tensor `a`"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
                12,
            ),
            &["bytes 4..8", "between tensors `a` and `b`"],
        ),
        (
            file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                6,
            ),
            &["2 trailing bytes"],
        ),
        (
            file(r#"{"__metadata__":{"k":1}}"#, 0),
            &["`__metadata__` entry `k`", "not a string"],
        ),
        (
            file(r#"{"__metadata__":[]}"#, 0),
            &["`__metadata__` is a JSON list"],
        ),
        (file(r#"{"a":[1]}"#, 0), &["tensor `a` is a JSON list"]),
    ];
    for (bytes, needles) in cases {
        let e = error(&bytes);
        for needle in needles {
            assert!(e.contains(needle), "{e:?} does not mention {needle:?}");
        }
    }
}

#[test]
fn empty_files_and_empty_tensors_are_accepted_as_safetensors_does() {
    assert!(parse_header(&file("{}", 0)).is_ok());
    assert!(parse_header(&file("{}  ", 0)).is_ok());
    let h = parse_header(&file(
        r#"{"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    ))
    .unwrap();
    assert_eq!(h.tensors.len(), 2);
}

/// Tensor entries, sorted: (name, dtype, shape, offsets).
type Entries = Vec<(String, Dtype, Vec<usize>, (usize, usize))>;

/// What the `safetensors` crate makes of the same bytes.
fn reference(bytes: &[u8]) -> Option<Entries> {
    let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
    let mut tensors: Vec<_> = meta
        .tensors()
        .into_iter()
        .map(|(n, i)| (n, i.dtype, i.shape.clone(), i.data_offsets))
        .collect();
    tensors.sort();
    Some(tensors)
}

fn ours(h: &Header) -> Entries {
    let mut tensors: Vec<_> = h
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data_offsets))
        .collect();
    tensors.sort();
    tensors
}

/// Agreement with the safetensors crate, which accepts a repeated name (keeping one).
fn agrees(bytes: &[u8]) -> std::result::Result<(), TestCaseError> {
    match (parse_header(bytes), reference(bytes)) {
        (Ok(h), Some(r)) => prop_assert_eq!(ours(&h), r),
        (Ok(h), None) => prop_assert!(false, "accepted what safetensors refuses: {h:?}"),
        (Err(e), Some(_)) => prop_assert!(
            e.contains("more than once"),
            "refused what safetensors accepts: {e}"
        ),
        (Err(_), None) => {}
    }
    Ok(())
}

/// A structurally plausible header: a few tensors with random dtypes, shapes and offsets,
/// mostly consistent, sometimes not.
fn header_text() -> impl Strategy<Value = (String, usize)> {
    let dtypes = prop::sample::select(vec![
        "F32", "F16", "BF16", "F64", "I64", "U8", "F4", "BOOL", "X9",
    ]);
    let tensor = (
        dtypes,
        prop::collection::vec(0usize..5, 0..3),
        any::<bool>(),
        0usize..3,
    );
    (prop::collection::vec(tensor, 0..5), any::<bool>(), 0usize..3).prop_map(
        |(tensors, metadata, slack)| {
            let mut entries = Vec::new();
            if metadata {
                entries.push(r#""__metadata__":{"format":"pt"}"#.to_string());
            }
            let mut offset = 0usize;
            for (i, (dtype, shape, consistent, skew)) in tensors.into_iter().enumerate() {
                let bits = match dtype {
                    "F64" | "I64" => 64,
                    "F32" => 32,
                    "F16" | "BF16" => 16,
                    "F4" => 4,
                    _ => 8,
                };
                let len = shape.iter().product::<usize>() * bits / 8;
                let (start, end) = if consistent {
                    (offset, offset + len)
                } else {
                    (offset.saturating_sub(skew), offset + len + skew)
                };
                offset = end;
                // Names repeat now and then.
                let name = format!("t{}", i % 3);
                entries.push(format!(
                    r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{start},{end}]}}"#
                ));
            }
            (format!("{{{}}}", entries.join(",")), offset + slack % 2)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn generated_headers_agree_with_safetensors((header, data_len) in header_text()) {
        agrees(&file(&header, data_len))?;
    }

    #[test]
    fn mutated_files_never_panic_and_agree_with_safetensors(
        (header, data_len) in header_text(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = file(&header, data_len);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        agrees(&bytes)?;
    }
}
