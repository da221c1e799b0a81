//! A memory-mapped safetensors file, and the unmapping of its consumed pages in batches.

use std::path::PathBuf;
use std::sync::Mutex;

use memmap2::Mmap;

/// One safetensors file of a checkpoint, mapped read-only.
pub(super) struct MappedFile {
    pub(super) path: PathBuf,
    pub(super) map: Mmap,
    released: Mutex<Released>,
}

/// Bytes consumed but still mapped, at most [`RELEASE_BATCH`] of them: unmapping is one system
/// call per range and a TLB flush on every CPU each (splitting a huge-page mapping first when
/// the range ends inside one), which per tensor cost a tenth of a bf16 coalesce's time. The
/// ranges of consecutive tensors are merged and unmapped together.
#[derive(Default)]
struct Released {
    ranges: Vec<std::ops::Range<usize>>,
    bytes: usize,
}

/// Consumed bytes a file may keep mapped before they are unmapped.
const RELEASE_BATCH: usize = 16 << 20;

impl Released {
    /// Adds a consumed `range`, merged with a pending one it touches; returns the ranges to
    /// unmap when [`RELEASE_BATCH`] bytes are pending.
    fn add(&mut self, range: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
        self.bytes += range.len();
        match self
            .ranges
            .iter_mut()
            .find(|r| r.start <= range.end && range.start <= r.end)
        {
            Some(r) => *r = r.start.min(range.start)..r.end.max(range.end),
            None => self.ranges.push(range),
        }
        if self.bytes < RELEASE_BATCH {
            return Vec::new();
        }
        self.bytes = 0;
        std::mem::take(&mut self.ranges)
    }
}

impl MappedFile {
    pub(super) fn new(path: PathBuf, map: Mmap) -> Self {
        MappedFile {
            path,
            map,
            released: Mutex::default(),
        }
    }

    /// Asks the kernel to read `range` of the file into the page cache, without waiting for it;
    /// see [`Prefetch`](super::Prefetch). Best effort.
    pub(super) fn read_ahead(&self, range: std::ops::Range<usize>) {
        #[cfg(unix)]
        let _ = self
            .map
            .advise_range(memmap2::Advice::WillNeed, range.start, range.len());
    }

    /// Marks `range` of the file consumed; see [`Checkpoint::release`].
    ///
    /// [`Checkpoint::release`]: super::Checkpoint::release
    pub(super) fn release(&self, range: std::ops::Range<usize>) {
        let Some(ranges) = self.released.lock().ok().map(|mut r| r.add(range)) else {
            return;
        };
        for range in ranges {
            #[cfg(unix)]
            // SAFETY: the map is a read-only shared file mapping (`Mmap::map`), where
            // MADV_DONTNEED only drops page table entries: the next access faults the same
            // file pages back in, so any slice borrowed from the map keeps reading the same
            // bytes. (The UB memmap2 warns of concerns private or anonymous mappings, whose
            // contents are lost.)
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    range.start,
                    range.len(),
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RELEASE_BATCH, Released};

    #[test]
    fn released_ranges_are_merged_and_unmapped_once_a_batch_is_pending() {
        let mut released = Released::default();
        let quarter = RELEASE_BATCH / 4;
        // Adjacent on either side, overlapping, and apart.
        assert!(released.add(quarter..2 * quarter).is_empty());
        assert!(released.add(0..quarter).is_empty());
        assert!(released.add(8 * quarter..9 * quarter - 1).is_empty());
        assert_eq!(
            released.ranges,
            [0..2 * quarter, 8 * quarter..9 * quarter - 1]
        );
        assert_eq!(
            released.add(2 * quarter - 10..3 * quarter - 9),
            [0..3 * quarter - 9, 8 * quarter..9 * quarter - 1]
        );
        // Nothing is left pending, and the count starts again.
        assert!(released.ranges.is_empty());
        let almost_a_batch = 0..RELEASE_BATCH - 1;
        assert!(released.add(almost_a_batch.clone()).is_empty());
        assert_eq!(released.add(0..1), [almost_a_batch]);
    }
}
