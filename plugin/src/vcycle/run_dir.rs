//! The run directory's housekeeping: the configuration's JSON text, and clearing what a killed
//! run leaves behind.

use std::fs;
use std::path::{Path, PathBuf};

use vcycle_transform::write::sweep_leftovers;

use super::CONFIG_FILE;
use crate::error::{Result, io, json};

pub(super) fn pretty(value: &serde_json::Value, dir: &Path) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(json(dir.join(CONFIG_FILE)))
}

/// Cleans `dir` after a killed run. The transform's sweep removes the work directories of
/// killed writes, putting back a directory that an interrupted replacement had moved aside
/// (a replacement only starts after the state was written, so what it moved aside was
/// complete). With `only_keep`, every other entry not in `keep` goes too.
pub(super) fn clear_leftovers(dir: &Path, keep: &[PathBuf], only_keep: bool) -> Result<()> {
    sweep_leftovers(dir)?;
    if !only_keep {
        return Ok(());
    }
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if !keep.contains(&path) {
            remove_path(&path)?;
        }
    }
    Ok(())
}

pub(super) fn remove_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        fs::remove_dir_all(path).map_err(io(path))
    } else {
        fs::remove_file(path).map_err(io(path))
    }
}
