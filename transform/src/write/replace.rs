//! Replacing one path atomically, for library callers that keep their own files (the plugin's
//! run directory): the same work directories, lock and sweep as every output the CLI writes
//! (see `output_policy.rs`), with no input to protect and replacement always allowed.

use std::fs::File;
use std::path::Path;

use super::output_policy::{OutputPolicy, commit, parent_of};
use crate::error::{Error, Result};

/// Writes `path` whole or not at all, replacing whatever is there (file or directory).
///
/// `fill` creates the new file or directory at the path it is given, inside a work directory
/// beside `path`; once it returns, everything it wrote is flushed to disk and renamed into
/// place. If `fill` fails, `path` is untouched and the work directory is removed. A process
/// killed mid-way leaves a work directory behind, which [`sweep_leftovers`] (or the next write
/// into the same directory) removes, putting back an old `path` it had moved aside.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let state = dir.path().join("state.json");
/// vcycle_transform::write::replace_atomically(&state, |new| {
///     std::fs::write(new, "{}\n").map_err(|e| vcycle_transform::Error::Output {
///         output: new.to_path_buf(),
///         reason: e.to_string(),
///     })
/// })?;
/// assert_eq!(std::fs::read_to_string(&state)?, "{}\n");
/// # Ok(())
/// # }
/// ```
pub fn replace_atomically<E: From<Error>>(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let parent = parent_of(path);
    std::fs::create_dir_all(&parent).map_err(Error::io(&parent))?;
    let mut staged = OutputPolicy::new(&[], true)?.stage(path)?;
    let new = staged.path();
    fill(&new)?;
    sync_tree(&new).map_err(|e| Error::Output {
        output: path.to_path_buf(),
        reason: format!("cannot be flushed to disk: {e}"),
    })?;
    commit(std::slice::from_mut(&mut staged))?;
    Ok(())
}

/// Removes what writes killed mid-way left in `dir` (the work directories of processes that no
/// longer run), putting back an old file or directory that a killed replacement had moved
/// aside. Best effort: a leftover that cannot be removed never affects a later write.
pub fn sweep_leftovers(dir: &Path) -> Result<()> {
    OutputPolicy::new(&[], true)?.sweep_locked(dir);
    Ok(())
}

/// Flushes the file at `path`, or every file and directory under it.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            sync_tree(&entry?.path())?;
        }
    }
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dir_entries as entries;

    #[test]
    fn a_directory_replaces_a_directory_and_nothing_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("old.bin"), b"old").unwrap();
        replace_atomically::<Error>(&target, |new| {
            std::fs::create_dir(new).map_err(Error::io(new))?;
            std::fs::write(new.join("model.bin"), b"new").map_err(Error::io(new))
        })
        .unwrap();
        assert_eq!(entries(&target), ["model.bin"]);
        assert_eq!(entries(dir.path()), ["ckpt"]);
    }

    #[test]
    fn a_failing_fill_leaves_the_old_file_and_no_work_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        std::fs::write(&target, "old").unwrap();
        let refused = replace_atomically(&target, |new| {
            std::fs::write(new, "half").map_err(Error::io(new))?;
            Err(Error::Output {
                output: target.clone(),
                reason: "refused by the test".into(),
            })
        });
        assert!(refused.is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(entries(dir.path()), ["state.json"]);
    }

    #[test]
    fn the_sweep_puts_back_a_directory_a_killed_replacement_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        // What a process killed between moving the old directory aside and renaming the new
        // one in leaves (pid 4000000 is above Linux's pid_max, so it never runs).
        let work = dir.path().join(".vcycle-4000000-x.tmp");
        std::fs::create_dir_all(work.join("old")).unwrap();
        std::fs::write(work.join("old/model.bin"), b"old").unwrap();
        std::fs::create_dir(work.join("new")).unwrap();
        std::fs::write(work.join(".vcycle-work"), "ckpt").unwrap();
        sweep_leftovers(dir.path()).unwrap();
        assert_eq!(entries(dir.path()), ["ckpt"]);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt/model.bin")).unwrap(),
            b"old"
        );
    }
}
