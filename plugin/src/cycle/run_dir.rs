//! The run directory's housekeeping: its lock, the configuration's JSON text, the checksums of
//! the files a resume relies on, and clearing what a killed run leaves behind.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use vcycle_transform::sweep_leftovers;

use crate::error::{Error, Result, io, json};

/// The folder of every checkpoint the run writes.
pub(super) const CHECKPOINTS_DIR: &str = "checkpoints";
/// The run's result: the last segment's trained model.
pub(super) const FINAL_DIR: &str = "final";
/// The folder of each segment's `SupervisedTraining` artifact directory.
pub(super) const SEGMENTS_DIR: &str = "segments";
/// The run's state (completed segments, checksums), rewritten after every boundary.
pub(super) const STATE_FILE: &str = "state.json";
/// The boundary log.
pub(super) const LOG_FILE: &str = "boundaries.json";
/// The configuration the run was started with.
pub(super) const CONFIG_FILE: &str = "vcycle.json";
/// The folder of Adam moments (`optimizer_state = carry`), one directory per checkpoint that
/// feeds a transform, named as that checkpoint.
pub(super) const MOMENTS_DIR: &str = "moments";
/// The file a training locks for as long as it uses the run directory; it holds its pid.
const LOCK_FILE: &str = "lock";

/// Exclusive use of a run directory, for as long as it is held: a second training or resume
/// in the same directory, from any process, is refused instead of mixing its models in.
pub(super) struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `dir` (created if missing), or refuses, naming the holder.
    pub(super) fn take(dir: &Path) -> Result<RunLock> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        if let Ok(meta) = path.symlink_metadata()
            && !meta.is_file()
        {
            return Err(Error::RunDirectory {
                path: dir.to_path_buf(),
                message: format!("{} is not a regular file", path.display()),
            });
        }
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&file).take(64).read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                return Err(Error::RunDirectory {
                    path: dir.to_path_buf(),
                    message: format!(
                        "in use by {holder}, which is training in it; wait for it to end or \
                         choose another run directory"
                    ),
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(Error::RunDirectory {
                    path: dir.to_path_buf(),
                    message: format!(
                        "{} cannot be locked ({source}), so another training could use the \
                         directory at the same time",
                        path.display()
                    ),
                });
            }
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io(&path))?;
        Ok(RunLock { _file: file })
    }
}

pub(super) fn pretty(value: &serde_json::Value, dir: &Path) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(json(dir.join(CONFIG_FILE)))
}

/// The SHA-256 of every file under `rel` (a file or directory, relative to `run_dir`), keyed by
/// its path relative to `run_dir` with `/` separators.
pub(super) fn checksums(run_dir: &Path, rel: &Path) -> Result<BTreeMap<String, String>> {
    let mut sums = BTreeMap::new();
    let mut pending = vec![rel.to_path_buf()];
    while let Some(rel) = pending.pop() {
        let path = run_dir.join(&rel);
        if path.is_dir() {
            for entry in fs::read_dir(&path).map_err(io(&path))? {
                pending.push(rel.join(entry.map_err(io(&path))?.file_name()));
            }
        } else {
            sums.insert(key(&rel), sha256(&path)?);
        }
    }
    Ok(sums)
}

/// Checks that every file of `sums` is in `run_dir` with the content it had when recorded.
pub(super) fn verify_checksums(run_dir: &Path, sums: &BTreeMap<String, String>) -> Result<()> {
    let refuse = |message: String| Error::Resume {
        path: run_dir.to_path_buf(),
        message,
    };
    for (rel, expected) in sums {
        let rel_path = Path::new(rel);
        if !rel_path
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(refuse(format!(
                "the state names `{rel}`, which is not a path inside the run directory"
            )));
        }
        let path = run_dir.join(rel_path);
        if !path.is_file() {
            return Err(refuse(format!(
                "{} is missing: the run's files were changed since it stopped",
                path.display()
            )));
        }
        if &sha256(&path)? != expected {
            return Err(refuse(format!(
                "{} is not the file the run wrote (its checksum differs): another process \
                 or a person changed it since the run stopped",
                path.display()
            )));
        }
    }
    Ok(())
}

fn key(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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
