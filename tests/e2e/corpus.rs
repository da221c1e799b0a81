//! The malformed-input corpus (issue 8): each case is a set of files built from a bundled
//! fixture with one thing wrong, a command line, and the words its refusal must contain.
//! `malformed.rs` runs them. Every byte is generated here, so the corpus needs no data files
//! and follows the fixtures when they are rebuilt.

use std::path::Path;

use safetensors::Dtype;
use serde_json::{Map, Value, json};

use crate::util::{Tensors, encode, fixtures_dir, load, read_json};

/// What part of issue 8's list a case exercises (the runner checks that each is covered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Truncated,
    HeaderLength,
    HeaderJson,
    OffsetsOutOfBounds,
    OffsetsOverlap,
    ByteLength,
    DuplicateName,
    UnknownDtype,
    NonFinite,
    MissingTensor,
    ExtraTensor,
    NotDivisible,
    ConfigDisagrees,
    InterpolateMismatch,
    Alpha,
    SchemeJson,
    OutputInsideInput,
    ReadOnlyOutput,
    FullDisk,
    SymlinkIntoInput,
    VerifyNonFinite,
    OutputPolicy,
    ConfigValue,
    Bounds,
    NonRegularFile,
    IndexDuplicate,
    RuleClaimsTwice,
}

impl Kind {
    pub const ALL: [Kind; 27] = [
        Kind::Truncated,
        Kind::HeaderLength,
        Kind::HeaderJson,
        Kind::OffsetsOutOfBounds,
        Kind::OffsetsOverlap,
        Kind::ByteLength,
        Kind::DuplicateName,
        Kind::UnknownDtype,
        Kind::NonFinite,
        Kind::MissingTensor,
        Kind::ExtraTensor,
        Kind::NotDivisible,
        Kind::ConfigDisagrees,
        Kind::InterpolateMismatch,
        Kind::Alpha,
        Kind::SchemeJson,
        Kind::OutputInsideInput,
        Kind::ReadOnlyOutput,
        Kind::FullDisk,
        Kind::SymlinkIntoInput,
        Kind::VerifyNonFinite,
        Kind::OutputPolicy,
        Kind::ConfigValue,
        Kind::Bounds,
        Kind::NonRegularFile,
        Kind::IndexDuplicate,
        Kind::RuleClaimsTwice,
    ];
}

/// One entry of a case's sandbox.
#[derive(Debug, Clone)]
pub enum Entry {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    /// A named pipe (FIFO): reading it blocks until something writes.
    Fifo,
}

/// A place the runner must prepare before the case runs: a directory the output cannot be
/// written into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    None,
    /// A read-only directory.
    ReadOnly,
    /// A filesystem of this many bytes (too small for the output).
    Full(usize),
}

#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub kind: Kind,
    /// Sandbox entries, created in order (relative paths).
    pub entries: Vec<(String, Entry)>,
    /// Prepared at `mount_at` before the entries are created.
    pub mount: Mount,
    pub mount_at: &'static str,
    pub args: Vec<String>,
    /// Words stderr must contain: the file, the tensor, the reason.
    pub needles: Vec<String>,
}

impl Case {
    fn new(name: &'static str, kind: Kind, args: &[&str], needles: &[&str]) -> Case {
        Case {
            name,
            kind,
            entries: Vec::new(),
            mount: Mount::None,
            mount_at: "",
            args: args.iter().map(|a| a.to_string()).collect(),
            needles: needles.iter().map(|n| n.to_string()).collect(),
        }
    }

    fn with(mut self, path: &str, entry: Entry) -> Case {
        self.entries.push((path.to_string(), entry));
        self
    }

    /// A copy of a fixture directory at `dest`, its model file replaced by `model` if given.
    fn with_fixture(mut self, fixture: &str, dest: &str, model: Option<Vec<u8>>) -> Case {
        self.entries.push((dest.to_string(), Entry::Dir));
        let dir = fixtures_dir().join(fixture);
        for name in ["config.json", "model.safetensors"] {
            let bytes = match (name, &model) {
                ("model.safetensors", Some(model)) => model.clone(),
                _ => read(&dir.join(name)),
            };
            self.entries
                .push((format!("{dest}/{name}"), Entry::File(bytes)));
        }
        self
    }

    fn with_config(mut self, dest: &str, edit: impl FnOnce(&mut Value)) -> Case {
        let mut config = read_json(&fixtures_dir().join("gpt2-tiny/config.json"));
        edit(&mut config);
        let path = format!("{dest}/config.json");
        self.entries.retain(|(p, _)| p != &path);
        self.entries.push((
            path,
            Entry::File(serde_json::to_vec_pretty(&config).expect("JSON serialises")),
        ));
        self
    }

    fn mounted(mut self, mount: Mount, at: &'static str) -> Case {
        self.mount = mount;
        self.mount_at = at;
        self
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The bundled GPT-2 model file's bytes.
fn gpt2_bytes() -> Vec<u8> {
    read(&fixtures_dir().join("gpt2-tiny/model.safetensors"))
}

/// A safetensors file's header text and data.
fn split(bytes: &[u8]) -> (String, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).expect("a UTF-8 header");
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from a header text (padded with spaces) and data.
fn join(header: &str, data: &[u8]) -> Vec<u8> {
    let mut header = header.as_bytes().to_vec();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    bytes
}

/// The fixture's model file with its header edited as JSON (the data unchanged).
fn edit_header(edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let (header, data) = split(&gpt2_bytes());
    let mut map: Map<String, Value> = serde_json::from_str(&header).expect("a JSON header");
    edit(&mut map);
    join(
        &serde_json::to_string(&map).expect("JSON serialises"),
        &data,
    )
}

/// The fixture's model file with the head count in its metadata, as vcycle writes it, so it
/// converts without config.json.
fn gpt2_file_with_heads() -> Vec<u8> {
    edit_header(|m| {
        m.insert(
            "__metadata__".into(),
            json!({"format": "pt", "vcycle.heads": "4"}),
        );
    })
}

/// The fixture's model file with its header edited as text.
fn edit_header_text(edit: impl FnOnce(String) -> String) -> Vec<u8> {
    let (header, data) = split(&gpt2_bytes());
    let edited = edit(header.clone());
    assert_ne!(edited, header, "the edit changed nothing");
    join(&edited, &data)
}

/// The fixture's tensors re-saved after `edit`.
fn edit_tensors(edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let mut tensors = load(&fixtures_dir().join("gpt2-tiny"));
    edit(&mut tensors);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("model.safetensors");
    crate::util::save(&path, &tensors, None);
    read(&path)
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

/// Sets one element of a float tensor.
fn poke(tensors: &mut Tensors, name: &str, index: usize, value: f64) {
    let t = tensors.get_mut(name).expect("the tensor exists");
    let mut values = t.values();
    values[index] = value;
    t.data = encode(t.dtype, &values);
}

const LN: &str = "transformer.h.1.ln_1.weight";
const LN_BIAS: &str = "transformer.h.1.ln_1.bias";
const MLP: &str = "transformer.h.2.mlp.c_fc.weight";

/// `coalesce in --heads 2 -o out`, the command most cases run.
const COALESCE: &[&str] = &["coalesce", "in", "--heads", "2", "-o", "out"];

/// Every case.
pub fn cases() -> Vec<Case> {
    let model = gpt2_bytes();
    let mut cases = Vec::new();
    let file_case = |name, kind, bytes: Vec<u8>, needles: &[&str]| {
        let mut needles = needles.to_vec();
        needles.push("in/model.safetensors");
        Case::new(name, kind, COALESCE, &needles).with_fixture("gpt2-tiny", "in", Some(bytes))
    };

    // The file itself.
    cases.push(file_case(
        "truncated-in-the-data",
        Kind::Truncated,
        model[..model.len() - 100].to_vec(),
        &["not a valid safetensors file", "go beyond", "truncated"],
    ));
    cases.push(file_case(
        "truncated-in-the-header",
        Kind::Truncated,
        model[..200].to_vec(),
        &["header length", "beyond the end of the file"],
    ));
    cases.push(file_case(
        "shorter-than-the-length-field",
        Kind::Truncated,
        model[..5].to_vec(),
        &["5 bytes long", "too short"],
    ));
    cases.push(file_case(
        "empty-file",
        Kind::Truncated,
        Vec::new(),
        &["0 bytes long"],
    ));
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

    // α.
    let alpha = |name, value: &str, extra: &[&str], needles: &[&str]| {
        let alpha_arg = format!("--alpha={value}");
        let mut args: Vec<&str> = vec!["interpolate", "in", "other", alpha_arg.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", "out"]);
        Case::new(name, Kind::Alpha, &args, needles)
            .with_fixture("gpt2-tiny", "in", None)
            .with_fixture("gpt2-tiny", "other", None)
    };
    cases.push(alpha(
        "alpha-above-one",
        "1.5",
        &[],
        &["alpha = 1.5", "[0, 1]", "--allow-extrapolation"],
    ));
    cases.push(alpha(
        "alpha-below-zero",
        "-0.25",
        &[],
        &["alpha = -0.25", "[0, 1]"],
    ));
    cases.push(alpha(
        "alpha-nan-even-extrapolating",
        "NaN",
        &["--allow-extrapolation"],
        &["alpha = NaN", "finite"],
    ));
    cases.push(alpha(
        "alpha-infinite-even-extrapolating",
        "inf",
        &["--allow-extrapolation"],
        &["alpha = inf", "finite"],
    ));
    cases.push(
        Case::new(
            "grow-alpha-above-one",
            Kind::Alpha,
            &[
                "grow", "small", "--large", "in", "--alpha", "2", "-o", "out",
            ],
            &["alpha = 2", "[0, 1]"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with_fixture("gpt2-tiny", "small", None),
    );

    // Scheme text.
    let scheme = |name, option: &'static str, value: &'static str, needles: &[&str]| {
        Case::new(
            name,
            Kind::SchemeJson,
            &[
                "coalesce", "in", "--heads", "2", "--layers", "2", option, value, "-o", "out",
            ],
            needles,
        )
        .with_fixture("gpt2-tiny", "in", None)
    };
    cases.push(scheme(
        "scheme-json-cut",
        "--width-scheme",
        "[[0,1],[2,3",
        &["--width-scheme", "[[0,1],[2,3", "EOF"],
    ));
    cases.push(scheme(
        "scheme-json-object",
        "--depth-scheme",
        "{\"groups\": [[0,1]]}",
        &[
            "--depth-scheme",
            "is not `strided`, `adjacent`, `similar` or JSON groups",
        ],
    ));
    cases.push(scheme(
        "scheme-json-negative-unit",
        "--width-scheme",
        "[[0,-1],[2,3]]",
        &["--width-scheme", "invalid value: integer `-1`"],
    ));
    cases.push(scheme(
        "scheme-json-repeated-unit",
        "--width-scheme",
        "[[0,1],[1,3]]",
        &[
            "width scheme (head groups)",
            "unit 1 appears more than once",
        ],
    ));

    // Where the output goes.
    cases.push(
        Case::new(
            "output-is-the-input",
            Kind::OutputInsideInput,
            &["coalesce", "in", "--heads", "2", "-o", "in", "--force"],
            &["output in", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "output-inside-the-input",
            Kind::OutputInsideInput,
            &["coalesce", "in", "--heads", "2", "-o", "in/small"],
            &["output in/small", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "output-file-is-the-input-file",
            Kind::OutputInsideInput,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "-o",
                "in/../in/model.safetensors",
                "--force",
            ],
            &["is the input"],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads())),
    );
    cases.push(
        Case::new(
            "plan-json-over-the-input",
            Kind::OutputInsideInput,
            &[
                "coalesce",
                "in",
                "--heads",
                "2",
                "--dry-run",
                "--plan-json",
                "in/config.json",
            ],
            &["output in/config.json", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "output-through-a-symlinked-directory",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "link/small"],
            &["output link/small", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("link", Entry::Symlink("in".into())),
    );
    cases.push(
        Case::new(
            "output-is-a-dangling-symlink-into-the-input",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "out", "--force"],
            &["output out", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("out", Entry::Symlink("in/new".into())),
    );
    cases.push(
        Case::new(
            "output-is-a-symlink-to-the-input",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "link", "--force"],
            &["output link", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("link", Entry::Symlink("in".into())),
    );
    cases.push(
        Case::new(
            "read-only-output-directory",
            Kind::ReadOnlyOutput,
            &["coalesce", "in", "--heads", "2", "-o", "ro/out"],
            &["output ro/out", "cannot be written"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .mounted(Mount::ReadOnly, "ro"),
    );
    cases.push(
        Case::new(
            "full-disk-directory-output",
            Kind::FullDisk,
            &["coalesce", "in", "--heads", "2", "-o", "full/out"],
            &[
                "output full/out",
                "cannot be written",
                "No space left on device",
            ],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .mounted(Mount::Full(64 * 1024), "full"),
    );
    cases.push(
        Case::new(
            "full-disk-file-output-over-an-old-one",
            Kind::FullDisk,
            &[
                "decoalesce",
                "in/model.safetensors",
                "--heads",
                "8",
                "-o",
                "full/out.safetensors",
                "--force",
            ],
            &[
                "output full/out.safetensors",
                "cannot be written",
                "No space left on device",
            ],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads()))
        .mounted(Mount::Full(64 * 1024), "full")
        .with(
            "full/out.safetensors",
            Entry::File(b"the previous output".to_vec()),
        ),
    );
    cases.extend(round_two_cases());
    cases
}

/// The bundled GPT-2 rule file with `extra` appended.
fn gpt2_rules(extra: &str) -> Entry {
    let path = fixtures_dir().join("../transform/rules/gpt2.toml");
    let mut text = String::from_utf8(read(&path)).expect("a UTF-8 rule file");
    text.push_str(extra);
    Entry::File(text.into_bytes())
}

/// Issue 21's classes: checks that could not fail, paths written outside the output rules,
/// config values ignored, unbounded sizes, non-regular files, duplicate index entries.
fn round_two_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let nan_model = || edit_tensors(|t| poke(t, MLP, 7, f64::NAN));
    for (name, args) in [
        ("verify-nan-in-the-reference", ["verify", "nan", "in"]),
        ("verify-nan-in-the-other", ["verify", "in", "nan"]),
    ] {
        let mut args = args.to_vec();
        args.extend(["--max-rel", "1e-9"]);
        cases.push(
            Case::new(
                name,
                Kind::VerifyNonFinite,
                &args,
                &["nan", "NaN", "no difference"],
            )
            .with_fixture("gpt2-tiny", "in", None)
            .with_fixture("gpt2-tiny", "nan", Some(nan_model())),
        );
    }
    for (name, limit) in [
        ("verify-max-rel-nan", "NaN"),
        ("verify-max-rel-negative", "-1"),
    ] {
        cases.push(
            Case::new(
                name,
                Kind::VerifyNonFinite,
                &["verify", "in", "in", &format!("--max-rel={limit}")],
                &["--max-rel", "not a finite number >= 0"],
            )
            .with_fixture("gpt2-tiny", "in", None),
        );
    }

    // --plan-json and -o follow one policy.
    let plan = |name: &'static str, extra: &[&str], needles: &[&str]| {
        let mut args = COALESCE.to_vec();
        args.extend(extra);
        Case::new(name, Kind::OutputPolicy, &args, needles).with_fixture("gpt2-tiny", "in", None)
    };
    cases.push(plan(
        "plan-json-is-the-output",
        &["--plan-json", "out"],
        &["output out", "is the output out"],
    ));
    cases.push(plan(
        "plan-json-inside-the-output",
        &["--plan-json", "out/plan.json"],
        &["output out/plan.json", "inside the output out"],
    ));
    cases.push(
        plan(
            "plan-json-over-an-existing-file",
            &["--plan-json", "plan.json"],
            &["output plan.json", "already exists"],
        )
        .with("plan.json", Entry::File(b"keep me".to_vec())),
    );
    cases.push(plan(
        "plan-json-in-a-missing-directory",
        &["--plan-json", "missing/plan.json"],
        &["output missing/plan.json", "does not exist"],
    ));
    cases.push(
        plan(
            "plan-json-is-the-rules-file",
            &[
                "--rules",
                "rules.toml",
                "--plan-json",
                "rules.toml",
                "--force",
            ],
            &["output rules.toml", "is the input"],
        )
        .with("rules.toml", gpt2_rules("")),
    );
    cases.push(
        Case::new(
            "output-is-the-rules-file",
            Kind::OutputPolicy,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "--rules",
                "rules.toml",
                "-o",
                "rules.toml",
                "--force",
            ],
            &["output rules.toml", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads()))
        .with("rules.toml", gpt2_rules("")),
    );
    // A hub snapshot: the model's files are links into a blob store, which the output may not
    // replace.
    cases.push(
        Case::new(
            "output-replaces-the-blobs-an-input-links-to",
            Kind::SymlinkIntoInput,
            &[
                "coalesce",
                "snap/main",
                "--heads",
                "2",
                "-o",
                "snap/blobs",
                "--force",
            ],
            &["output snap/blobs", "contains the input"],
        )
        .with("snap/blobs", Entry::Dir)
        .with(
            "snap/blobs/config",
            Entry::File(read(&fixtures_dir().join("gpt2-tiny/config.json"))),
        )
        .with("snap/blobs/model", Entry::File(gpt2_bytes()))
        .with("snap/main", Entry::Dir)
        .with(
            "snap/main/config.json",
            Entry::Symlink("../blobs/config".into()),
        )
        .with(
            "snap/main/model.safetensors",
            Entry::Symlink("../blobs/model".into()),
        ),
    );

    // config.json values the rules read.
    for (name, key, value, needles) in [
        (
            "config-negative-hidden-size",
            "n_embd",
            json!(-64),
            &["`n_embd` = -64", "not a size"][..],
        ),
        (
            "config-layers-as-a-word",
            "n_layer",
            json!("four"),
            &["`n_layer` = \"four\"", "not a size"],
        ),
        (
            "config-negative-ffn-size",
            "n_inner",
            json!(-5),
            &["`n_inner` = -5", "not a size"],
        ),
        (
            "config-zero-heads",
            "n_head",
            json!(0),
            &["`n_head` = 0", "not a size"],
        ),
        (
            "config-vocab-size-disagrees",
            "vocab_size",
            json!(100),
            &["`vocab_size` = 100", "disagrees", "128"],
        ),
        (
            "config-positions-disagree",
            "n_positions",
            json!(1024),
            &["`n_positions` = 1024", "disagrees"],
        ),
        (
            "config-epsilon-not-a-number",
            "layer_norm_epsilon",
            json!("small"),
            &["`layer_norm_epsilon`", "not a positive number"],
        ),
    ] {
        cases.push(
            Case::new(name, Kind::ConfigValue, COALESCE, needles)
                .with_fixture("gpt2-tiny", "in", None)
                .with_config("in", |c| {
                    c[key] = value;
                }),
        );
    }

    // Sizes bounded up front.
    for (name, flag, value, needles) in [
        (
            "verify-batch-near-u64-max",
            "--batch",
            "18446744073709551615",
            &["--batch", "lower --batch or --seq"][..],
        ),
        (
            "verify-batch-too-large",
            "--batch",
            "100000000",
            &["lower --batch or --seq"],
        ),
        (
            "verify-seq-beyond-the-positions",
            "--seq",
            "100000",
            &["100000 tokens", "64 learned positions"],
        ),
        (
            "verify-batch-zero",
            "--batch",
            "0",
            &["--batch", "at least 1"],
        ),
    ] {
        cases.push(
            Case::new(
                name,
                Kind::Bounds,
                &["verify", "in", "in", flag, value],
                needles,
            )
            .with_fixture("gpt2-tiny", "in", None),
        );
    }
    cases.push(
        Case::new(
            "heads-zero",
            Kind::Bounds,
            &["coalesce", "in", "--heads", "0", "-o", "out"],
            &["--heads", "at least 1"],
        )
        .with_fixture("gpt2-tiny", "in", None),
    );
    cases.push(
        Case::new(
            "shard-size-on-a-file",
            Kind::Bounds,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "--shard-size",
                "1MB",
                "-o",
                "out.safetensors",
            ],
            &[
                "in/model.safetensors",
                "--shard-size needs a model directory",
            ],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads())),
    );

    // Files that are not regular files.
    let fifo = |name: &'static str, args: &[&str], path: &str, needles: &[&str]| {
        Case::new(name, Kind::NonRegularFile, args, needles)
            .with_fixture("gpt2-tiny", "in", None)
            .with(path, Entry::Fifo)
    };
    cases.push(fifo(
        "config-json-is-a-fifo",
        &["inspect", "in"],
        "in/config.json",
        &["in/config.json", "not a regular file"],
    ));
    cases.push(fifo(
        "extra-file-is-a-fifo",
        COALESCE,
        "in/tokenizer.json",
        &["in/tokenizer.json", "not a regular file"],
    ));
    cases.push(fifo(
        "rules-file-is-a-fifo",
        &["inspect", "in", "--rules", "rules.toml"],
        "rules.toml",
        &["rules.toml", "not a regular file"],
    ));

    // A tensor listed twice in the index (serde's maps keep the last one silently).
    let (header, data) = split(&gpt2_bytes());
    let header: Map<String, Value> = serde_json::from_str(&header).expect("a JSON header");
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    let mut index = String::from("{\"metadata\": {}, \"weight_map\": {");
    for name in &names {
        index.push_str(&format!("\"{name}\": \"model-1.safetensors\", "));
    }
    index.push_str(&format!("\"{}\": \"model-1.safetensors\"}}}}", names[0]));
    cases.push(
        Case::new(
            "index-lists-a-tensor-twice",
            Kind::IndexDuplicate,
            COALESCE,
            &["model.safetensors.index.json", names[0], "more than once"],
        )
        .with("in", Entry::Dir)
        .with(
            "in/config.json",
            Entry::File(read(&fixtures_dir().join("gpt2-tiny/config.json"))),
        )
        .with(
            "in/model-1.safetensors",
            Entry::File(join(&serde_json::to_string(&header).expect("JSON"), &data)),
        )
        .with(
            "in/model.safetensors.index.json",
            Entry::File(index.into_bytes()),
        ),
    );

    cases.push(
        Case::new(
            "rule-claims-a-tensor-twice",
            Kind::RuleClaimsTwice,
            &["inspect", "in", "--rules", "rules.toml"],
            &[
                "rules.toml",
                "transformer.h.0.ln_1.weight",
                "claimed by two rules",
            ],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with(
            "rules.toml",
            gpt2_rules("\n[[tensors]]\nname = \"h.0.ln_1.weight\"\naxes = [\"hidden:out\"]\n"),
        ),
    );
    cases
}

/// A case that must succeed with a warning naming the tensor (NaN without --strict).
pub fn warning_cases() -> Vec<Case> {
    vec![
        Case::new(
            "nan-weight-warns",
            Kind::NonFinite,
            COALESCE,
            &["warning:", MLP, "1 NaN and 0 infinite", "--strict"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| poke(t, MLP, 7, f64::NAN))),
        ),
    ]
}
