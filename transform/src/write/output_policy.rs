//! The one policy for every path vcycle writes (the output, `--plan-json`, anything else):
//! never an input (compared by real path, so links do not hide one), never over an existing
//! path without `force`, written whole into a work directory beside it and renamed into place,
//! nothing left behind on failure.
//!
//! Each output is staged in a work directory next to it (see `work_dir.rs`). The output's
//! directory is resolved to its real path once, before anything is moved, so that a path that
//! runs through the output itself (`out/../out`, or `../small` from inside `small`) still
//! names the same place after the old output has been moved aside. Committing takes an
//! exclusive lock on each output's directory, so concurrent writers to one output replace it
//! one after the other; outputs committed together are recorded as one group, so that a run
//! killed half-way through their renames is rolled back whole by the next run's sweep.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use super::work_dir::{self, NEW, OLD, WorkDir, output_error};
use crate::error::{Error, Result};

/// Where a run may write: the real paths of everything it reads, and whether it may replace.
#[derive(Debug, Clone)]
pub struct OutputPolicy {
    inputs: Vec<PathBuf>,
    force: bool,
}

impl OutputPolicy {
    /// `inputs`: every path the run reads (model directories and files, rule files); links are
    /// resolved.
    pub fn new(inputs: &[&Path], force: bool) -> Result<OutputPolicy> {
        let inputs = inputs
            .iter()
            .map(|input| input.canonicalize().map_err(Error::io(*input)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OutputPolicy { inputs, force })
    }

    /// Refuses an output that is, is inside or contains an input or another of `outputs`, whose
    /// directory does not exist, whose path ends in `.`, or that exists without `force`. The
    /// leftovers of killed runs in each output's directory are swept first, so that an old
    /// output they put back is seen now rather than after the work.
    pub fn check(&self, outputs: &[&Path]) -> Result<()> {
        let refuse = |output: &Path, reason: String| Error::Output {
            output: output.to_path_buf(),
            reason,
        };
        let resolved = outputs
            .iter()
            .map(|&output| match output.file_name() {
                None => Err(refuse(output, "has no file name".into())),
                Some(_) if ends_in_dot(output) => Err(refuse(
                    output,
                    "ends in `.`: name the output itself, not a path through it".into(),
                )),
                Some(_) => {
                    resolve(output).map_err(|e| refuse(output, format!("cannot be resolved: {e}")))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, (&output, real)) in outputs.iter().zip(&resolved).enumerate() {
            for input in &self.inputs {
                if let Some(reason) = overlap(real, input, "input", input) {
                    return Err(refuse(output, reason));
                }
            }
            for (j, (other, other_real)) in outputs.iter().zip(&resolved).enumerate() {
                if let Some(reason) = overlap(real, other_real, "output", other).filter(|_| i != j)
                {
                    return Err(refuse(output, reason));
                }
            }
            let parent = parent_of(output);
            if !parent.is_dir() {
                let reason = format!("its directory {} does not exist", parent.display());
                return Err(refuse(output, reason));
            }
            self.sweep_locked(&parent);
            if output.symlink_metadata().is_ok() && !self.force {
                return Err(Error::OutputExists {
                    output: output.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// Prepares `output` for writing: sweeps its directory, then creates the work directory
    /// whose [`Staged::path`] the content goes to.
    pub(crate) fn stage(&self, output: &Path) -> Result<Staged> {
        let out_err = output_error(output);
        let parent = parent_of(output);
        self.sweep_locked(&parent);
        let (Some(name), Ok(real_parent)) = (output.file_name(), parent.canonicalize()) else {
            return Err(Error::Output {
                output: output.to_path_buf(),
                reason: "cannot be resolved to a file in an existing directory".into(),
            });
        };
        let work = WorkDir::create(&real_parent, name).map_err(out_err)?;
        Ok(Staged {
            work,
            target: real_parent.join(name),
            output: output.to_path_buf(),
            force: self.force,
        })
    }

    /// [`work_dir::sweep`] with `dir` locked, so that no writer commits meanwhile.
    pub(crate) fn sweep_locked(&self, dir: &Path) {
        let _lock = DirLock::take(dir);
        work_dir::sweep(dir, &self.inputs);
    }
}

/// An output being written: its work directory, removed (with whatever is in it) when dropped.
#[derive(Debug)]
pub(crate) struct Staged {
    work: WorkDir,
    /// The output as the user named it, for messages.
    output: PathBuf,
    /// The output's real directory and file name, where it is renamed to.
    target: PathBuf,
    force: bool,
}

impl Staged {
    /// Where the content goes (a file or a directory, not yet created).
    pub(crate) fn path(&self) -> PathBuf {
        self.work.path().join(NEW)
    }

    /// The work directory (errors on paths inside it are the output's).
    pub(crate) fn work(&self) -> &Path {
        self.work.path()
    }

    fn old(&self) -> PathBuf {
        self.work.path().join(OLD)
    }
}

/// Moves every staged output into place, all or none: with each output's directory locked,
/// an existing output (with `force`) is moved into the work directory and the new one renamed
/// in; a failure puts back what was already moved. Several outputs are first recorded as one
/// group in each work directory, so that a kill between their renames is undone by the sweep.
/// Work directories, old outputs inside them, go when the staged outputs are dropped.
pub(crate) fn commit(staged: &mut [Staged]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = staged.iter().map(|s| parent_of(&s.target)).collect();
    // One order for every process, so that two runs locking the same directories cannot
    // wait for each other.
    dirs.sort();
    dirs.dedup();
    let locks: Vec<DirLock> = dirs.iter().map(|d| DirLock::take(d)).collect();
    let _committing = work_dir::committing();
    // Alone, a file replacing a file is one atomic rename; with others, the old one is moved
    // aside so that a later failure (or the sweep after a kill) can put it back.
    let grouped = staged.len() > 1;
    if grouped {
        let members: Vec<&Path> = staged.iter().map(Staged::work).collect();
        for s in staged.iter() {
            s.work
                .write_group(&members)
                .map_err(output_error(&s.output))?;
        }
    }
    let mut done = 0;
    let mut result = Ok(());
    for s in staged.iter() {
        result = move_into_place(s, grouped);
        if result.is_err() {
            break;
        }
        done += 1;
    }
    if result.is_err() {
        for s in staged.iter().take(done).rev() {
            let _ = std::fs::rename(&s.target, s.path());
            let _ = std::fs::rename(s.old(), &s.target);
        }
    }
    for dir in &dirs {
        sync_dir(dir);
    }
    drop(locks);
    result
}

fn move_into_place(s: &Staged, keep_old: bool) -> Result<()> {
    let out_err = |reason: String| Error::Output {
        output: s.output.clone(),
        reason,
    };
    let new = s.path();
    let existing = s.target.symlink_metadata().ok();
    if existing.is_some() && !s.force {
        return Err(Error::OutputExists {
            output: s.output.clone(),
        });
    }
    // Rename cannot replace across kinds or onto a directory: then the old output is moved
    // aside first.
    if existing.is_some_and(|m| keep_old || m.is_dir() || new.is_dir()) {
        std::fs::rename(&s.target, s.old())
            .map_err(|e| out_err(format!("cannot move the existing output aside: {e}")))?;
    }
    if let Err(e) = std::fs::rename(&new, &s.target) {
        let _ = std::fs::rename(s.old(), &s.target);
        return Err(out_err(format!(
            "cannot move the finished output into place: {e}"
        )));
    }
    Ok(())
}

/// An exclusive lock on a directory, held until dropped. Best effort: where the filesystem
/// cannot lock, writers are not serialised (each rename is still atomic).
pub(super) struct DirLock(Option<File>);

impl DirLock {
    fn take(dir: &Path) -> DirLock {
        let file = File::open(dir).ok().filter(|f| f.lock().is_ok());
        DirLock(file)
    }

    /// The lock if it is free now (or the filesystem cannot lock); None if another process
    /// holds it.
    pub(super) fn try_take(dir: &Path) -> Option<DirLock> {
        let file = File::open(dir).ok()?;
        match file.try_lock() {
            Ok(()) => Some(DirLock(Some(file))),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(_)) => Some(DirLock(None)),
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Some(file) = &self.0 {
            let _ = file.unlock();
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) {
    // Directory fsync makes the renames durable; not every filesystem supports it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The directory an output is written into (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why output `real` may not be written, if it overlaps `other` (the real path of the `what`
/// named `shown`).
fn overlap(real: &Path, other: &Path, what: &str, shown: &Path) -> Option<String> {
    let shown = shown.display();
    if real == other {
        Some(format!("is the {what} {shown}"))
    } else if real.starts_with(other) {
        Some(format!("is inside the {what} {shown}"))
    } else if other.starts_with(real) {
        Some(format!(
            "contains the {what} {shown}, which replacing it would delete"
        ))
    } else {
        None
    }
}

/// Whether `path` ends in a `.` component (`out/.`), which [`Path::file_name`] hides.
fn ends_in_dot(path: &Path) -> bool {
    let mut bytes = path.as_os_str().as_encoded_bytes();
    while let Some(trimmed) = bytes.strip_suffix(b"/") {
        bytes = trimmed;
    }
    bytes == b"." || bytes.ends_with(b"/.")
}

/// The absolute path with every symlink resolved, including a dangling one at the end (a
/// link to a file not yet created inside an input is inside that input) and those of
/// components that do not exist yet; `..` is applied after resolving what precedes it.
pub(crate) fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Ok(p);
    }
    resolve_links(&std::path::absolute(path)?, 0)
}

fn resolve_links(absolute: &Path, hops: usize) -> std::io::Result<PathBuf> {
    const MAX_HOPS: usize = 40;
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => {
                let next = resolved.join(other);
                match std::fs::read_link(&next) {
                    Ok(target) if hops < MAX_HOPS => {
                        // A relative target is relative to the link's directory; an absolute
                        // one replaces the path.
                        resolved = resolve_links(&resolved.join(target), hops + 1)?;
                    }
                    _ => resolved = next,
                }
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::dir_entries as entries;

    /// A work directory of process `pid` for `output`, as a killed run leaves it.
    fn work_dir(dir: &Path, pid: u32, tag: &str, output: &str) -> PathBuf {
        let work = dir.join(format!(".vcycle-{pid}-{tag}.tmp"));
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join(".vcycle-work"), output).unwrap();
        work
    }

    #[test]
    fn only_dead_work_directories_are_swept_and_an_aside_output_restored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // A pid that is not running: the largest possible, far above pid_max.
        let dead = u32::MAX;
        std::fs::write(work_dir(d, dead, "a", "x").join(NEW), "partial").unwrap();
        // Old output moved aside, new one not yet in place: put back.
        std::fs::create_dir(work_dir(d, dead, "b", "model").join(OLD)).unwrap();
        // Old output moved aside, new one in place: the old one goes.
        std::fs::write(d.join("file.safetensors"), "new").unwrap();
        std::fs::write(work_dir(d, dead, "c", "file.safetensors").join(OLD), "old").unwrap();
        // Work in progress (another thread of this process), its marker locked: kept.
        let live = WorkDir::create(&d.canonicalize().unwrap(), "y".as_ref()).unwrap();
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        // Not made by vcycle: a file, and a directory without the marker.
        std::fs::write(d.join(format!(".vcycle-{dead}-f.tmp")), "user file").unwrap();
        std::fs::create_dir(d.join(format!(".vcycle-{dead}-g.tmp"))).unwrap();
        // A dead run's work directory that this run reads.
        let input = work_dir(d, dead, "h", "z");
        std::fs::write(input.join(NEW), "an input").unwrap();

        let policy = OutputPolicy::new(&[&input.join(NEW)], false).unwrap();
        policy.sweep_locked(d);
        let mut expected = vec![
            format!(".vcycle-{dead}-f.tmp"),
            format!(".vcycle-{dead}-g.tmp"),
            format!(".vcycle-{dead}-h.tmp"),
            live_name,
            "file.safetensors".to_string(),
            "model".to_string(),
        ];
        expected.sort();
        assert_eq!(entries(d), expected);
        assert_eq!(
            std::fs::read_to_string(d.join("file.safetensors")).unwrap(),
            "new"
        );
        drop(live);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_resolved_even_dangling_and_through_missing_components() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let input = root.join("in");
        std::fs::create_dir(&input).unwrap();
        std::os::unix::fs::symlink("in/new.safetensors", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(&input, root.join("link")).unwrap();
        assert_eq!(
            resolve(&root.join("dangling")).unwrap(),
            input.join("new.safetensors")
        );
        assert_eq!(resolve(&root.join("link/a/b")).unwrap(), input.join("a/b"));
        assert_eq!(resolve(&root.join("x/../in/y")).unwrap(), input.join("y"));
        // A loop ends instead of recursing forever.
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve(&root.join("loop/out")).is_ok());
        let policy = OutputPolicy::new(&[&input], true).unwrap();
        for output in ["dangling", "link/new", "x/../in/y"] {
            let message = policy.check(&[&root.join(output)]).unwrap_err().to_string();
            assert!(message.contains("inside the input"), "{output}: {message}");
        }
    }

    #[test]
    fn outputs_may_not_overlap_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let policy = OutputPolicy::new(&[], true).unwrap();
        let out = d.join("out");
        for (other, words) in [
            (out.clone(), "is the output"),
            (out.join("plan.json"), "is inside the output"),
        ] {
            let message = policy.check(&[&other, &out]).unwrap_err().to_string();
            assert!(message.contains(words), "{message}");
        }
        assert!(policy.check(&[&d.join("plan.json"), &out]).is_ok());
    }

    #[test]
    fn a_failed_commit_puts_back_what_it_moved() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), "old a").unwrap();
        let policy = OutputPolicy::new(&[], true).unwrap();
        let a = policy.stage(&d.join("a")).unwrap();
        std::fs::write(a.path(), "new a").unwrap();
        // Its content was never written: moving it into place fails.
        let b = policy.stage(&d.join("b")).unwrap();
        let mut staged = vec![a, b];
        assert!(commit(&mut staged).is_err());
        drop(staged);
        assert_eq!(entries(d), ["a"]);
        assert_eq!(std::fs::read_to_string(d.join("a")).unwrap(), "old a");
    }

    #[test]
    fn concurrent_writers_to_one_output_leave_one_whole_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let policy = OutputPolicy::new(&[], true).unwrap();
        // Both staged before either commits: the interleaving that raced.
        let mut staged: Vec<Staged> = (0..2)
            .map(|i| {
                let s = policy.stage(&out).unwrap();
                std::fs::create_dir(s.path()).unwrap();
                std::fs::write(s.path().join("model"), format!("writer {i}")).unwrap();
                s
            })
            .collect();
        std::thread::scope(|scope| {
            for s in staged.iter_mut() {
                scope.spawn(move || commit(std::slice::from_mut(s)).unwrap());
            }
        });
        drop(staged);
        assert_eq!(entries(dir.path()), ["out"]);
        let content = std::fs::read_to_string(out.join("model")).unwrap();
        assert!(content.starts_with("writer "), "{content}");
    }
}
