//! The run directory's housekeeping: the configuration's JSON text, and clearing what a killed
//! run leaves behind.

use std::fs;
use std::path::{Path, PathBuf};

use super::CONFIG_FILE;
use crate::error::{Result, io, json};

pub(super) fn pretty(value: &serde_json::Value, dir: &Path) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(json(dir.join(CONFIG_FILE)))
}

/// The name a leftover temporary of [`crate::hf::write_dir_atomically`] or
/// [`crate::hf::write_file_atomically`] stands for, and whether it is a replaced original moved aside:
/// `.NAME.tmp-PID` → (NAME, false), `.NAME.old-PID` → (NAME, true).
fn leftover_of(entry: &str) -> Option<(&str, bool)> {
    let (base, pid) = entry.strip_prefix('.')?.rsplit_once('-')?;
    pid.parse::<u32>().ok()?;
    match base.rsplit_once('.')? {
        (name, "tmp") => Some((name, false)),
        (name, "old") => Some((name, true)),
        _ => None,
    }
}

/// Cleans `dir` after a killed run. A directory of `keep` that is missing but was moved aside
/// by an interrupted replacement (`.NAME.old-PID`) is put back: the state named it, so it was
/// complete, and a replacement only starts after the state was written. Then every leftover
/// temporary goes, and with `only_keep` every other entry not in `keep` too.
pub(super) fn clear_leftovers(dir: &Path, keep: &[PathBuf], only_keep: bool) -> Result<()> {
    let entries = |dir: &Path| -> Result<Vec<PathBuf>> {
        fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.path()).map_err(io(dir)))
            .collect()
    };
    for path in entries(dir)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some((original, true)) = name.as_deref().and_then(leftover_of) {
            let original = dir.join(original);
            if keep.contains(&original) && !original.exists() {
                fs::rename(&path, &original).map_err(io(&path))?;
            }
        }
    }
    for path in entries(dir)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let temporary = name.as_deref().and_then(leftover_of).is_some();
        if temporary || (only_keep && !keep.contains(&path)) {
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
