//! The file a safetensors output is written into: with direct I/O where the system takes it.
//!
//! An output is written once and not read back by the conversion, and it is fsynced before
//! it is renamed into place, so the page cache only costs: a copy of every byte into freshly
//! allocated cache pages, which also evicts what the machine had cached (the inputs, a
//! training's data). On the virtual machines the benchmarks ran on, writing 2 GB took 9-26 s
//! through the page cache and 1.3-1.8 s with `O_DIRECT`. Direct I/O needs buffers, lengths
//! and file offsets aligned to the device's block size, so bytes are staged in an aligned
//! buffer and written a stage at a time; the unaligned tail of the file goes through the page
//! cache. Where the filesystem refuses direct I/O (tmpfs, some network filesystems) or the
//! system has none, every write goes through the page cache.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use crate::pages::Pages;

/// Bytes written per direct write.
const STAGE_BYTES: usize = 4 << 20;
/// The alignment of direct writes' buffers, lengths and offsets: a multiple of the logical
/// block size of devices with 512-byte and with 4 KiB blocks.
const ALIGN: usize = 4096;

#[cfg(test)]
thread_local! {
    /// Under test: bytes of tensor files the disk still takes before it is full (shared with
    /// the writer threads of this thread's conversions).
    pub(super) static DISK_SPACE: std::cell::RefCell<Option<std::sync::Arc<std::sync::atomic::AtomicU64>>> =
        const { std::cell::RefCell::new(None) };
}

/// A file written from start to end, a stage at a time; [`Disk::finish`] writes what is left.
pub(super) struct Disk<'a> {
    file: &'a File,
    /// The same file opened for direct I/O; None: writes go through the page cache.
    direct: Option<File>,
    /// Holds the stage at an aligned address: `STAGE_BYTES` from `start`.
    buffer: Pages,
    start: usize,
    staged: usize,
    /// The file offset of the stage's first byte.
    position: u64,
    /// Under test: [`DISK_SPACE`] of the thread that opened the file (writes run on another).
    #[cfg(test)]
    space: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl<'a> Disk<'a> {
    /// Writes into `file` (empty, opened for writing), with direct I/O if it can be opened so.
    pub(super) fn new(file: &'a File) -> Self {
        Self::with_direct(file, open_direct(file))
    }

    /// Writes into `file` through the page cache only.
    #[cfg(test)]
    pub(super) fn buffered(file: &'a File) -> Self {
        Self::with_direct(file, None)
    }

    fn with_direct(file: &'a File, direct: Option<File>) -> Self {
        let buffer = Pages::zeroed(STAGE_BYTES + ALIGN);
        // 0 for a mapping; below ALIGN for an allocation, which can start at any address.
        let start = buffer.as_ptr().align_offset(ALIGN).min(ALIGN);
        Disk {
            file,
            direct,
            buffer,
            start,
            staged: 0,
            position: 0,
            #[cfg(test)]
            space: DISK_SPACE.with_borrow(Clone::clone),
        }
    }

    /// Whether whole stages go to the disk without the page cache.
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Appends `bytes`; returns how many bytes reached the file (whole stages).
    pub(super) fn write_all(&mut self, mut bytes: &[u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while !bytes.is_empty() {
            let free = &mut self.buffer[self.start + self.staged..self.start + STAGE_BYTES];
            let n = free.len().min(bytes.len());
            let (head, rest) = bytes.split_at(n);
            free[..n].copy_from_slice(head);
            self.staged += n;
            bytes = rest;
            if self.staged == STAGE_BYTES {
                self.write_stage(STAGE_BYTES)?;
                written += STAGE_BYTES;
            }
        }
        Ok(written)
    }

    /// Writes the staged bytes: the aligned part like a stage, the rest through the page
    /// cache. The file is complete, not yet synced.
    pub(super) fn finish(&mut self) -> std::io::Result<()> {
        let aligned = self.staged / ALIGN * ALIGN;
        if aligned > 0 {
            // Leaves the tail staged at the start.
            self.write_stage(aligned)?;
        }
        if self.staged > 0 {
            self.direct = None;
            self.write_stage(self.staged)?;
        }
        Ok(())
    }

    /// Writes the first `len` staged bytes at `position` and keeps the rest staged; `len` is
    /// a multiple of [`ALIGN`] unless the writes go through the page cache.
    fn write_stage(&mut self, len: usize) -> std::io::Result<()> {
        let bytes = &self.buffer[self.start..self.start + len];
        self.take_space(len)?;
        let written = match &self.direct {
            Some(direct) => write_at(direct, bytes, self.position),
            None => write_at(self.file, bytes, self.position),
        };
        match written {
            Ok(()) => {}
            // The filesystem took the direct open but not the write: the page cache, from now.
            Err(e) if self.direct.is_some() && e.kind() == std::io::ErrorKind::InvalidInput => {
                self.direct = None;
                write_at(self.file, bytes, self.position)?;
            }
            Err(e) => return Err(e),
        }
        self.position += len as u64;
        self.buffer
            .copy_within(self.start + len..self.start + self.staged, self.start);
        self.staged -= len;
        Ok(())
    }

    #[cfg(not(test))]
    fn take_space(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }

    /// Under test: a disk that fills up takes no write larger than the space it has left.
    #[cfg(test)]
    fn take_space(&self, len: usize) -> std::io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(space) = &self.space else {
            return Ok(());
        };
        let left = space.load(SeqCst);
        match left.checked_sub(len as u64) {
            Some(rest) => {
                space.store(rest, SeqCst);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (simulated)",
            )),
        }
    }
}

fn write_at(mut file: &File, bytes: &[u8], position: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(position))?;
    file.write_all(bytes)
}

/// `file` opened again, for direct I/O: through /proc/self/fd, the same file whatever
/// happens to its name. None where the system or the filesystem has no direct I/O.
#[cfg(target_os = "linux")]
fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &File) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ from one offset to the next, so a misplaced stage shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    /// Writes `pieces` of `data` in turn through `disk`'s file; returns the file's bytes.
    fn write_pieces(disk: &mut Disk<'_>, data: &[u8], pieces: &[usize]) {
        let mut at = 0;
        for &len in pieces {
            let end = (at + len).min(data.len());
            disk.write_all(&data[at..end]).unwrap();
            at = end;
        }
        disk.write_all(&data[at..]).unwrap();
        disk.finish().unwrap();
    }

    #[test]
    fn files_are_written_whole_across_stages_and_tails_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        // Lengths around the alignment and around a stage; pieces smaller than an alignment,
        // larger than a stage, and straddling both.
        let lengths = [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            STAGE_BYTES - 1,
            STAGE_BYTES,
            STAGE_BYTES + 8,
            2 * STAGE_BYTES + 3 * ALIGN + 5,
        ];
        let pieces = [8, 1000, ALIGN + 3, STAGE_BYTES + 17, 3, STAGE_BYTES];
        for len in lengths {
            let data = pattern(len);
            for direct in [true, false] {
                let path = dir.path().join(format!("{len}-{direct}"));
                let file = File::create(&path).unwrap();
                let mut disk = if direct {
                    Disk::new(&file)
                } else {
                    Disk::buffered(&file)
                };
                write_pieces(&mut disk, &data, &pieces);
                drop(disk);
                drop(file);
                assert!(
                    std::fs::read(&path).unwrap() == data,
                    "{len} bytes, {direct}"
                );
            }
        }
    }

    /// Where the test's filesystem takes direct I/O, the disk uses it.
    #[cfg(target_os = "linux")]
    #[test]
    fn direct_io_is_used_where_the_filesystem_takes_it() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe");
        let file = File::create(&path).unwrap();
        let supported = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_ok();
        let mut disk = Disk::new(&file);
        assert_eq!(disk.is_direct(), supported);
        let data = pattern(STAGE_BYTES + ALIGN + 1);
        assert_eq!(disk.write_all(&data).unwrap(), STAGE_BYTES);
        assert_eq!(disk.is_direct(), supported);
        disk.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
    }

    /// A direct write the filesystem refuses (here: from a buffer off the alignment) is
    /// written through the page cache, and so is everything after it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("misaligned");
        let file = File::create(&path).unwrap();
        let mut disk = Disk::new(&file);
        let direct = disk.is_direct();
        disk.start += 1;
        let data = pattern(2 * STAGE_BYTES + 3);
        assert_eq!(disk.write_all(&data).unwrap(), 2 * STAGE_BYTES);
        assert!(!disk.is_direct());
        disk.finish().unwrap();
        assert!(
            std::fs::read(&path).unwrap() == data,
            "direct I/O at first: {direct}"
        );
    }
}
