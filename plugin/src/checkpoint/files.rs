//! The files of a model directory, written atomically through the transform's protocol.

use std::fs;
use std::path::Path;

use serde_json::Value;
use vcycle_transform::replace_atomically;

use crate::error::{Result, io, json};

/// The weights file of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The configuration file of a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Creates the directory `dir` filled by `fill`, atomically, replacing an existing `dir`: the
/// transform's [`replace_atomically`], so the plugin's files follow the same protocol (and
/// leave the same leftovers after a kill) as every output the CLI writes.
pub(crate) fn write_dir_atomically(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    replace_atomically(dir, |new| {
        fs::create_dir(new).map_err(io(new))?;
        fill(new)
    })
}

/// Writes `bytes` to `path` atomically, replacing an existing file.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_atomically(path, |new| fs::write(new, bytes).map_err(io(new)))
}

/// Writes a pretty-printed JSON file.
pub(crate) fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(json(path))?;
    fs::write(path, text + "\n").map_err(io(path))
}
