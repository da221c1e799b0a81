//! Work directories: where an output is staged beside its final path until committed, and the
//! sweep that clears what killed runs left.
//!
//! A work directory `.vcycle-<pid>-<random>.tmp` (mode 0700) holds:
//! - `.vcycle-work`, the marker: the output's file name (a name in the same directory, never a
//!   path), locked (`flock`) by the writing process for as long as it lives;
//! - `new`, the new content, and `old`, an existing output moved aside while being replaced;
//! - `group`, while outputs committed together (`--plan-json` with the output) are renamed into
//!   place: the absolute paths of every work directory of that commit, one a line.
//!
//! The sweep acts only on what a vcycle run of the same user provably made and no process
//! still writes: a directory (not a link) with that name, owned by the running user, holding a
//! regular marker file owned by the running user, of bounded size, that names a file without a
//! separator, and whose lock the sweep can take (where the filesystem cannot lock, the pid in
//! the name must be gone from `/proc`). It never follows a path it read anywhere but to the
//! work directories of the same group, which pass the same checks, and it only ever moves an
//! entry between a work directory and the name its marker gives in that work directory's own
//! parent.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::Error;

/// The marker file of a work directory.
const MARKER: &str = ".vcycle-work";
/// The marker while it is written (it is renamed to [`MARKER`] once locked and complete).
const MARKER_PENDING: &str = ".vcycle-work.pending";
/// The new content.
pub(super) const NEW: &str = "new";
/// An old output moved aside while being replaced.
pub(super) const OLD: &str = "old";
/// The list of a commit's work directories.
const GROUP: &str = "group";
/// The largest marker read: a file name is at most 255 bytes on Linux, 1,024 elsewhere.
const MARKER_MAX: u64 = 4096;
/// The largest group file read: a few absolute paths.
const GROUP_MAX: u64 = 64 * 1024;

/// The work directories this process has staged and not yet removed, for
/// [`remove_work_dirs`].
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held while outputs are renamed into place, so that [`remove_work_dirs`] never interrupts a
/// commit half-way.
static COMMITTING: Mutex<()> = Mutex::new(());

/// A lock that a panic elsewhere must not turn into a skipped cleanup: the data it guards is
/// a list of paths, valid whatever the panicking thread did.
fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Holds off [`remove_work_dirs`] while a commit renames outputs into place.
pub(super) fn committing() -> MutexGuard<'static, ()> {
    lock_ignoring_poison(&COMMITTING)
}

/// Removes every work directory this process has open (outputs being written, and the old
/// outputs of a commit just finished), after waiting for a commit in progress to end; later
/// commits wait forever. For a signal handler that exits right after: an interrupted run then
/// leaves nothing behind, and every output is either the old one or the new one, whole.
pub fn remove_work_dirs() {
    std::mem::forget(committing());
    let live = std::mem::take(&mut *lock_ignoring_poison(&LIVE));
    for work in live {
        // A writer thread may still create a file in it: try again a few times.
        for _ in 0..5 {
            if fs::remove_dir_all(&work).is_ok() || !work.exists() {
                break;
            }
        }
    }
}

/// A work directory of this process, locked; removed with its content when dropped.
#[derive(Debug)]
pub(super) struct WorkDir {
    path: PathBuf,
    /// The marker, locked while this process lives.
    _marker: File,
}

impl WorkDir {
    /// Creates a work directory in `parent` (a real, absolute path) for the output `name`.
    pub(super) fn create(parent: &Path, name: &OsStr) -> std::io::Result<WorkDir> {
        let path = tempfile::Builder::new()
            .prefix(&format!(".vcycle-{}-", std::process::id()))
            .suffix(".tmp")
            .tempdir_in(parent)?
            .keep();
        lock_ignoring_poison(&LIVE).push(path.clone());
        let remove = |e| {
            forget_live(&path);
            let _ = fs::remove_dir_all(&path);
            e
        };
        // Locked before it takes the marker's name, so that no sweep ever sees it unlocked.
        let pending = path.join(MARKER_PENDING);
        let mut marker = File::create_new(&pending).map_err(remove)?;
        let locked = match marker.try_lock() {
            Ok(()) => Ok(()),
            Err(TryLockError::WouldBlock) => Err(std::io::Error::other("marker already locked")),
            // A filesystem that cannot lock: the sweep falls back to the pid.
            Err(TryLockError::Error(_)) => Ok(()),
        };
        locked
            .and_then(|()| marker.write_all(&name_bytes(name)))
            .and_then(|()| marker.sync_all())
            .and_then(|()| fs::rename(&pending, path.join(MARKER)))
            .map_err(remove)?;
        Ok(WorkDir {
            path,
            _marker: marker,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Records, durably, that this work directory commits together with `members` (itself
    /// included): a sweep then rolls them all forward or all back.
    pub(super) fn write_group(&self, members: &[&Path]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for member in members {
            text.extend_from_slice(&name_bytes(member.as_os_str()));
            text.push(b'\n');
        }
        let mut file = File::create(self.path.join(GROUP))?;
        file.write_all(&text)?;
        file.sync_all()?;
        File::open(&self.path)?.sync_all()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        forget_live(&self.path);
    }
}

fn forget_live(path: &Path) {
    lock_ignoring_poison(&LIVE).retain(|p| p != path);
}

/// Removes the work directories of dead vcycle runs in `dir` (which the caller has locked),
/// finishing or undoing the commit each was in. `inputs`: real paths the current run reads; a
/// work directory holding one is left alone. Errors are ignored: this is housekeeping, and a
/// leftover never affects a new output.
pub(super) fn sweep(dir: &Path, inputs: &[PathBuf]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    for entry in entries.flatten() {
        if !is_work_dir_name(&entry.file_name()) {
            continue;
        }
        let Some(dead) = DeadWorkDir::claim(&dir.join(entry.file_name()), inputs) else {
            continue;
        };
        let Some(group) = dead.group(&dir, inputs) else {
            continue;
        };
        settle(&group.members);
    }
}

/// Finishes the commit of `members`, or undoes it: it completed if no member still holds its
/// new content (the last rename of a commit is its last step; a member whose work directory
/// is gone was removed after the commit completed).
fn settle(members: &[DeadWorkDir]) {
    let committed = members.iter().all(|m| !exists(&m.path.join(NEW)));
    for m in members {
        if !committed && !exists(&m.path.join(NEW)) && exists(&m.target) {
            // Renamed into place by a commit that did not complete: take it back.
            if fs::rename(&m.target, m.path.join(NEW)).is_err() {
                continue;
            }
        }
        let old = m.path.join(OLD);
        if exists(&old) && !exists(&m.target) {
            let _ = fs::rename(&old, &m.target);
        }
    }
    for m in members {
        let _ = fs::remove_dir_all(&m.path);
    }
}

/// A work directory that passed every check of the module documentation, its marker locked
/// by this process.
struct DeadWorkDir {
    path: PathBuf,
    /// Where its output goes: the marker's name in the work directory's own parent.
    target: PathBuf,
    _marker: File,
}

/// The members of one commit, and the locks on their directories other than the swept one.
struct Group {
    members: Vec<DeadWorkDir>,
    _locks: Vec<super::output_policy::DirLock>,
}

impl DeadWorkDir {
    /// `path` (absolute, in a real directory) if it is a dead run's work directory of this
    /// user that holds none of `inputs`.
    fn claim(path: &Path, inputs: &[PathBuf]) -> Option<DeadWorkDir> {
        let meta = path.symlink_metadata().ok()?;
        if !meta.is_dir() || !owned_by_this_user(&meta) {
            return None;
        }
        if inputs.iter().any(|i| i.starts_with(path)) {
            return None;
        }
        let marker_path = path.join(MARKER);
        let marker_meta = marker_path.symlink_metadata().ok()?;
        if !marker_meta.is_file()
            || !owned_by_this_user(&marker_meta)
            || marker_meta.len() > MARKER_MAX
        {
            return None;
        }
        let marker = File::open(&marker_path).ok()?;
        match marker.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Error(_)) if !pid_is_gone(path) => return None,
            Err(TryLockError::Error(_)) => {}
        }
        let name = read_bounded(&marker, MARKER_MAX)?;
        let name = plain_file_name(&name)?;
        let target = path.parent()?.join(name);
        Some(DeadWorkDir {
            path: path.to_path_buf(),
            target,
            _marker: marker,
        })
    }

    /// The commit this work directory was part of: itself alone, or every member its group
    /// file lists that still exists (each passing the same checks, its directory locked).
    /// None if a member is alive or fails a check: then nothing of the group is touched.
    fn group(self, swept: &Path, inputs: &[PathBuf]) -> Option<Group> {
        let group_path = self.path.join(GROUP);
        let Ok(meta) = group_path.symlink_metadata() else {
            return Some(Group {
                members: vec![self],
                _locks: Vec::new(),
            });
        };
        if !meta.is_file() || !owned_by_this_user(&meta) || meta.len() > GROUP_MAX {
            return None;
        }
        let text = read_bounded(&File::open(&group_path).ok()?, GROUP_MAX)?;
        let mut members = vec![];
        let mut locks = vec![];
        let mut dirs = vec![swept.to_path_buf()];
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let member = path_from_bytes(line);
            if member == self.path {
                continue;
            }
            let parent = member.parent()?;
            if !member.is_absolute()
                || !is_work_dir_name(member.file_name()?)
                || parent.canonicalize().ok()? != parent
            {
                return None;
            }
            if member.symlink_metadata().is_err() {
                continue;
            }
            if !dirs.iter().any(|d| d == parent) {
                locks.push(super::output_policy::DirLock::try_take(parent)?);
                dirs.push(parent.to_path_buf());
            }
            members.push(DeadWorkDir::claim(&member, inputs)?);
        }
        members.push(self);
        Some(Group {
            members,
            _locks: locks,
        })
    }
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// `.vcycle-….tmp`
fn is_work_dir_name(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|n| n.starts_with(".vcycle-") && n.ends_with(".tmp"))
}

/// Reads at most `max` bytes of `file`; None if it holds more.
fn read_bounded(file: &File, max: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

/// `bytes` as a file name in a directory: not empty, no separator, not `.` or `..`.
fn plain_file_name(bytes: &[u8]) -> Option<OsString> {
    let forbidden = bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.contains(&b'/')
        || bytes.contains(&0)
        || (cfg!(windows) && bytes.contains(&b'\\'));
    (!forbidden).then(|| path_from_bytes(bytes).into_os_string())
}

/// Whether the pid in a work directory's name no longer runs; false where that cannot be known
/// (no `/proc`).
fn pid_is_gone(path: &Path) -> bool {
    let Some(pid) = path
        .file_name()
        .and_then(OsStr::to_str)
        .and_then(|n| n.strip_prefix(".vcycle-"))
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    else {
        return false;
    };
    Path::new("/proc/self").exists()
        && pid != std::process::id()
        && !Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(unix)]
fn owned_by_this_user(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    meta.uid() == unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
fn owned_by_this_user(_: &fs::Metadata) -> bool {
    true
}

#[cfg(unix)]
pub(super) fn name_bytes(name: &OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().to_vec()
}

#[cfg(not(unix))]
pub(super) fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.to_string_lossy().into_owned().into_bytes()
}

#[cfg(unix)]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_bytes(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Maps an I/O error on a work directory to the output's error.
pub(super) fn output_error(output: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Output {
        output: output.to_path_buf(),
        reason: format!("cannot be written: {e}"),
    }
}
