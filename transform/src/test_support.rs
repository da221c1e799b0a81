//! Paths shared by the library's tests.

use std::path::PathBuf;

/// `../shared/hf-reference/<name>` beside the repository, or `$VCYCLE_HF_REFERENCE/<name>`.
pub fn hf_reference_dir(name: &str) -> Result<PathBuf, String> {
    let root = std::env::var_os("VCYCLE_HF_REFERENCE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/hf-reference"),
        PathBuf::from,
    );
    let dir = root.join(name);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(format!(
            "HF reference folder {} is missing; set VCYCLE_HF_REFERENCE to the folder holding bert/, gpt2/, …",
            dir.display()
        ))
    }
}

/// A committed fixture directory (`fixtures/<name>`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name)
}
