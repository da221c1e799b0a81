//! Zeroed memory for the output blocks a conversion computes and writes: mapped by whole huge
//! pages where the system gives them.
//!
//! A conversion touches its few blocks of 4 MiB (see [`crate::execute::Block`]) and the
//! writer's stage once each, so their page faults are a cost per conversion rather than per
//! byte, and a large one for a small model: faulting in 4 KiB pages, a bf16 BERT-Large
//! coalesce from the page cache took 14,500 page faults and 114 ms of CPU; with this memory
//! advised as transparent huge pages (a 2 MiB page per fault), 1,200 and 89 ms. Huge pages
//! need 2 MiB-aligned ranges: an anonymous mapping of a multiple of 2 MiB is aligned so by
//! Linux (6.7 and later), while the allocator's large allocations are not.

use std::ops::{Deref, DerefMut};

/// The size of a transparent huge page on x86-64 and (with 4 KiB base pages) arm64.
const HUGE_PAGE: usize = 2 << 20;

/// At least `len` zeroed bytes: an anonymous memory mapping advised as huge pages, or, where
/// the system refuses the mapping, an allocation.
#[derive(Default)]
pub(crate) struct Pages(Memory);

enum Memory {
    Mapped(memmap2::MmapMut),
    Allocated(Vec<u8>),
}

impl Default for Memory {
    fn default() -> Self {
        Memory::Allocated(Vec::new())
    }
}

impl Pages {
    /// `len` zeroed bytes (or more: a mapping is rounded up to whole huge pages), which the
    /// kernel allocates as they are first written.
    pub(crate) fn zeroed(len: usize) -> Self {
        match memmap2::MmapMut::map_anon(len.next_multiple_of(HUGE_PAGE)) {
            Ok(mapped) => {
                // Advice only: without it (or where it is refused) the pages are base pages.
                #[cfg(target_os = "linux")]
                let _ = mapped.advise(memmap2::Advice::HugePage);
                Pages(Memory::Mapped(mapped))
            }
            Err(_) => Pages(Memory::Allocated(vec![0; len])),
        }
    }
}

impl From<Vec<u8>> for Pages {
    fn from(bytes: Vec<u8>) -> Self {
        Pages(Memory::Allocated(bytes))
    }
}

impl Deref for Pages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Memory::Mapped(mapped) => mapped,
            Memory::Allocated(bytes) => bytes,
        }
    }
}

impl DerefMut for Pages {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.0 {
            Memory::Mapped(mapped) => mapped,
            Memory::Allocated(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_zeroed_writable_and_at_least_as_long_as_asked() {
        for len in [0, 1, 4096, HUGE_PAGE - 1, HUGE_PAGE + 1] {
            let mut pages = Pages::zeroed(len);
            assert!(pages.len() >= len);
            assert!(pages.iter().all(|&b| b == 0), "{len}");
            if let Some(last) = len.checked_sub(1) {
                pages[last] = 7;
                assert_eq!(pages[last], 7);
            }
        }
        assert_eq!(&*Pages::from(vec![1, 2]), [1, 2]);
        assert!(Pages::default().is_empty());
    }

    /// A mapping starts at a page boundary: the writer's direct I/O needs 4 KiB alignment.
    #[test]
    fn a_mapping_is_page_aligned() {
        let pages = Pages::zeroed(HUGE_PAGE);
        if let Memory::Mapped(_) = pages.0 {
            assert_eq!(pages.as_ptr() as usize % 4096, 0);
        }
    }
}
