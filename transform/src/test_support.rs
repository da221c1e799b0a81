//! Paths shared by the library's tests.

use std::path::PathBuf;

/// A folder of `fixtures/hf-reference`: a tiny HuggingFace checkpoint with the input and the
/// logits transformers computed for it (`scripts/hf_make_reference.py` regenerates them).
pub fn hf_reference_dir(name: &str) -> Result<PathBuf, String> {
    let dir = fixture_dir("hf-reference").join(name);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!("HF reference folder {} is missing", dir.display()))
    }
}

/// A committed fixture directory (`fixtures/<name>`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}

/// The names in `dir`, sorted.
pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}
