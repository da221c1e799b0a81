//! The safetensors header parser: the header length, the tensor entries and `__metadata__`,
//! checked against the file they came from.

use std::collections::BTreeMap;

use safetensors::Dtype;
use serde_json::Value;

use super::json::Json;

/// Bytes of the little-endian header length that starts every safetensors file.
pub const HEADER_LEN_BYTES: usize = 8;

/// The largest header accepted (the safetensors crate's limit).
pub const MAX_HEADER_LEN: usize = 100_000_000;

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range relative to the start of the data (after the header).
    pub data_offsets: (usize, usize),
}

/// A safetensors header, checked against the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Length of the JSON header in bytes (the data starts at 8 + this).
    pub header_len: usize,
    /// The `__metadata__` strings.
    pub metadata: BTreeMap<String, String>,
    /// Tensor entries in header order.
    pub tensors: Vec<HeaderTensor>,
}

/// Parses and checks the header of a whole safetensors file.
///
/// Accepts exactly what the safetensors format allows: an 8-byte little-endian length, that
/// many bytes of UTF-8 JSON (an object of tensor entries and an optional `__metadata__` map of
/// strings), then the data, every byte of which belongs to exactly one tensor. Unlike the
/// `safetensors` crate it refuses a name that appears twice (serde's maps keep the last one
/// silently), and its error says which tensor and which field is wrong.
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let Some(len_bytes) = bytes.first_chunk::<HEADER_LEN_BYTES>() else {
        return Err(format!(
            "the file is {} bytes long, too short for the 8-byte header length",
            bytes.len()
        ));
    };
    let declared = u64::from_le_bytes(*len_bytes);
    let header_len = usize::try_from(declared)
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .ok_or_else(|| {
            format!("the header length {declared} exceeds the limit of {MAX_HEADER_LEN} bytes")
        })?;
    let data_start = HEADER_LEN_BYTES + header_len;
    let Some(header_bytes) = bytes.get(HEADER_LEN_BYTES..data_start) else {
        return Err(format!(
            "the header length {header_len} goes beyond the end of the file ({} bytes): the file is truncated or not safetensors",
            bytes.len()
        ));
    };
    let text = std::str::from_utf8(header_bytes).map_err(|e| {
        format!(
            "the header is not UTF-8 text (invalid byte at header offset {})",
            e.valid_up_to()
        )
    })?;
    let json: Json =
        serde_json::from_str(text).map_err(|e| format!("the header is not valid JSON: {e}"))?;
    let Json::Object(entries) = json else {
        return Err(format!(
            "the header is a JSON {}, not an object",
            json.kind()
        ));
    };

    // A repeated name first: it is what makes the rest ambiguous.
    let mut seen = std::collections::BTreeSet::new();
    if let Some((name, _)) = entries.iter().find(|(name, _)| !seen.insert(name.as_str())) {
        return Err(if name == "__metadata__" {
            "`__metadata__` appears more than once in the header".to_string()
        } else {
            format!("tensor `{name}` appears more than once in the header")
        });
    }
    let data_len = bytes.len() - data_start;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            metadata = parse_metadata(value)?;
        } else {
            tensors.push(parse_tensor(name, value, data_len)?);
        }
    }
    check_coverage(&tensors, data_len)?;
    Ok(Header {
        header_len,
        metadata,
        tensors,
    })
}

fn parse_metadata(value: Json) -> std::result::Result<BTreeMap<String, String>, String> {
    let entries = match value {
        Json::Null => return Ok(BTreeMap::new()),
        Json::Object(entries) => entries,
        other => {
            return Err(format!(
                "`__metadata__` is a JSON {}, not an object of strings",
                other.kind()
            ));
        }
    };
    let mut metadata = BTreeMap::new();
    for (key, value) in entries {
        let Json::String(text) = value else {
            return Err(format!(
                "`__metadata__` entry `{key}` is a JSON {}, not a string",
                value.kind()
            ));
        };
        if metadata.insert(key.clone(), text).is_some() {
            return Err(format!(
                "`__metadata__` entry `{key}` appears more than once"
            ));
        }
    }
    Ok(metadata)
}

fn parse_tensor(
    name: String,
    value: Json,
    data_len: usize,
) -> std::result::Result<HeaderTensor, String> {
    let Json::Object(fields) = value else {
        return Err(format!(
            "tensor `{name}` is a JSON {}, not an object with dtype, shape and data_offsets",
            value.kind()
        ));
    };
    let mut dtype = None;
    let mut shape = None;
    let mut offsets = None;
    for (field, value) in fields {
        let slot_taken = match field.as_str() {
            "dtype" => {
                let Json::String(text) = &value else {
                    return Err(format!(
                        "tensor `{name}`: dtype is a JSON {}, not a string",
                        value.kind()
                    ));
                };
                let parsed = serde_json::from_value::<Dtype>(Value::String(text.clone()))
                    .map_err(|_| format!("tensor `{name}` has unknown dtype `{text}`"))?;
                dtype.replace(parsed).is_some()
            }
            "shape" => shape.replace(usize_list(&name, "shape", value)?).is_some(),
            "data_offsets" => {
                let list = usize_list(&name, "data_offsets", value)?;
                let [start, end] = list[..] else {
                    return Err(format!(
                        "tensor `{name}`: data_offsets has {} numbers, not 2",
                        list.len()
                    ));
                };
                offsets.replace((start, end)).is_some()
            }
            // Unknown fields are ignored, as the safetensors crate does.
            _ => false,
        };
        if slot_taken {
            return Err(format!(
                "tensor `{name}`: field `{field}` appears more than once"
            ));
        }
    }
    let missing = |field: &str| format!("tensor `{name}` has no `{field}`");
    let dtype = dtype.ok_or_else(|| missing("dtype"))?;
    let shape = shape.ok_or_else(|| missing("shape"))?;
    let (start, end) = offsets.ok_or_else(|| missing("data_offsets"))?;
    if end < start {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] end before they start"
        ));
    }
    let Some(expected) = crate::dtype::byte_len(dtype, &shape) else {
        return Err(format!(
            "tensor `{name}`: shape {shape:?} of {dtype:?} is not a whole number of bytes that fits in memory"
        ));
    };
    if end - start != expected {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] hold {} bytes, but {dtype:?} {shape:?} needs {expected}",
            end - start
        ));
    }
    if end > data_len {
        return Err(format!(
            "tensor `{name}`: data_offsets [{start}, {end}] go beyond the {data_len} bytes of data in the file (truncated?)"
        ));
    }
    Ok(HeaderTensor {
        name,
        dtype,
        shape,
        data_offsets: (start, end),
    })
}

/// A list of non-negative integers (shape, data_offsets).
fn usize_list(name: &str, field: &str, value: Json) -> std::result::Result<Vec<usize>, String> {
    let bad = |what: String| format!("tensor `{name}`: {field} {what}");
    let Json::Array(items) = value else {
        return Err(bad(format!(
            "is a JSON {}, not a list of integers",
            value.kind()
        )));
    };
    items
        .into_iter()
        .map(|item| match item {
            Json::Number(n) => n
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("holds {n}, not a non-negative integer"))),
            other => Err(bad(format!(
                "holds a JSON {}, not an integer",
                other.kind()
            ))),
        })
        .collect()
}

/// Every byte of the data belongs to exactly one tensor: sorted by offsets, the ranges start at
/// 0, touch without overlapping, and end at the end of the file.
fn check_coverage(tensors: &[HeaderTensor], data_len: usize) -> std::result::Result<(), String> {
    let mut order: Vec<&HeaderTensor> = tensors.iter().collect();
    order.sort_by_key(|t| t.data_offsets);
    let mut position = 0usize;
    let mut previous: Option<&HeaderTensor> = None;
    for t in order {
        let (start, end) = t.data_offsets;
        if start < position {
            let (ps, pe) = previous.map(|p| p.data_offsets).unwrap_or_default();
            return Err(format!(
                "tensors `{}` (data_offsets [{ps}, {pe}]) and `{}` (data_offsets [{start}, {end}]) overlap",
                previous.map(|p| p.name.as_str()).unwrap_or_default(),
                t.name
            ));
        }
        if start > position {
            return Err(match previous {
                Some(p) => format!(
                    "bytes {position}..{start} of the data, between tensors `{}` and `{}`, belong to no tensor",
                    p.name, t.name
                ),
                None => format!(
                    "bytes 0..{start} of the data, before tensor `{}`, belong to no tensor",
                    t.name
                ),
            });
        }
        position = end;
        previous = Some(t);
    }
    if position != data_len {
        return Err(format!(
            "the file holds {data_len} bytes of data but its tensors cover {position}: {} trailing bytes belong to no tensor",
            data_len - position
        ));
    }
    Ok(())
}
