//! The malformed-input corpus (issue 8): each case is a set of files built from a bundled
//! fixture with one thing wrong, a command line, and the words its refusal must contain.
//! `malformed.rs` runs them. Every byte is generated here, so the corpus needs no data files
//! and follows the fixtures when they are rebuilt. This file defines a case and the helpers
//! that build its files; the cases are in `corpus/`, a file for each thing they attack.

mod arguments;
mod model;
mod output;
mod round_two;
mod safetensors_file;

use std::path::Path;

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

/// The fixture's tensors re-saved after `edit`.
fn edit_tensors(edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let mut tensors = load(&fixtures_dir().join("gpt2-tiny"));
    edit(&mut tensors);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("model.safetensors");
    crate::util::save(&path, &tensors, None);
    read(&path)
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

/// A case running [`COALESCE`] on the GPT-2 fixture whose model file is `bytes`; the file is one
/// more needle.
fn file_case(name: &'static str, kind: Kind, bytes: Vec<u8>, needles: &[&str]) -> Case {
    let mut needles = needles.to_vec();
    needles.push("in/model.safetensors");
    Case::new(name, kind, COALESCE, &needles).with_fixture("gpt2-tiny", "in", Some(bytes))
}

/// Every case: the safetensors file, the model, the arguments, the output, then issue 21's
/// classes.
pub fn cases() -> Vec<Case> {
    [
        safetensors_file::cases(),
        model::cases(),
        arguments::cases(),
        output::cases(),
        round_two::cases(),
    ]
    .concat()
}

/// A case that must succeed with a warning naming the tensor (NaN without --strict).
pub fn warning_cases() -> Vec<Case> {
    vec![
        Case::new(
            "nan-weight-warns",
            Kind::NonFinite,
            COALESCE,
            &["warning:", MLP, "1 NaN and 0 infinite", "strict mode"],
        )
        .with_fixture(
            "gpt2-tiny",
            "in",
            Some(edit_tensors(|t| poke(t, MLP, 7, f64::NAN))),
        ),
    ]
}
