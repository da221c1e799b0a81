//! Reading a conversion's inputs ahead of its computation, in the order it consumes them.
//!
//! The computation reads its inputs through the memory map, so a checkpoint on disk is read by
//! page faults as the rows are computed: the disk waits while a block is computed and the
//! computation waits at each fault. A thread of its own asks the kernel for the next inputs
//! (`MADV_WILLNEED`) up to [`AHEAD_BYTES`] beyond the tensor being computed, so that reading
//! overlaps computing; a bounded distance ahead keeps the page cache from having to hold more
//! of a large model than the computation is about to use.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Condvar, Mutex};

use super::{Checkpoint, MappedFile};

/// How far ahead of the end of the tensor being computed the inputs are read.
const AHEAD_BYTES: usize = 256 << 20;

/// The bytes read in one request: large enough for the disk, small enough that the distance
/// ahead is kept to a few of them.
const REQUEST_BYTES: usize = 8 << 20;

/// The inputs of a conversion in the order it consumes them, and how far it got.
pub struct Prefetch<'a> {
    /// Input byte ranges in consumption order, each with its position in that order.
    requests: Vec<(usize, &'a MappedFile, Range<usize>)>,
    /// For each output tensor, the position just past its inputs.
    ends: HashMap<&'a str, usize>,
    /// How far ahead of the tensor being computed the inputs are read.
    ahead: usize,
    /// Position just past the inputs of the tensor being computed; `usize::MAX` once done.
    reached: Mutex<usize>,
    moved: Condvar,
}

impl<'a> Prefetch<'a> {
    /// `order` lists each output tensor's name with its inputs (checkpoint and tensor name), in
    /// the order the outputs are computed. An input read by several outputs is read ahead once.
    pub fn new(order: &[(&'a str, Vec<(&'a Checkpoint, &'a str)>)]) -> Self {
        Prefetch::ahead_by(order, AHEAD_BYTES)
    }

    fn ahead_by(order: &[(&'a str, Vec<(&'a Checkpoint, &'a str)>)], ahead: usize) -> Self {
        let mut requests = Vec::new();
        let mut ends = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        let mut position = 0usize;
        for (output, inputs) in order {
            for &(checkpoint, name) in inputs {
                if !seen.insert((checkpoint as *const Checkpoint, name)) {
                    continue;
                }
                let Some(info) = checkpoint.tensors.get(name) else {
                    continue;
                };
                let Some(file) = checkpoint.files.get(info.file) else {
                    continue;
                };
                let mut start = info.start;
                while start < info.end {
                    let end = info.end.min(start + REQUEST_BYTES);
                    requests.push((position, file, start..end));
                    position += end - start;
                    start = end;
                }
            }
            ends.insert(*output, position);
        }
        Prefetch {
            requests,
            ends,
            ahead,
            reached: Mutex::new(0),
            moved: Condvar::new(),
        }
    }

    /// Called as output tensor `name` starts being computed.
    pub fn reached(&self, name: &str) {
        let Some(&end) = self.ends.get(name) else {
            return;
        };
        if let Ok(mut reached) = self.reached.lock() {
            *reached = (*reached).max(end);
            self.moved.notify_one();
        }
    }

    /// Ends [`Prefetch::run`] when dropped: the computation is over, finished or failed (or
    /// panicked).
    pub fn finish_on_drop(&self) -> impl Drop + '_ {
        struct Finish<'p, 'a>(&'p Prefetch<'a>);
        impl Drop for Finish<'_, '_> {
            fn drop(&mut self) {
                self.0.finish();
            }
        }
        Finish(self)
    }

    /// Ends [`Prefetch::run`]: the computation is over, finished or failed.
    fn finish(&self) {
        if let Ok(mut reached) = self.reached.lock() {
            *reached = usize::MAX;
            self.moved.notify_one();
        }
    }

    /// Asks for the inputs ahead of the computation until the guard of
    /// [`Prefetch::finish_on_drop`] is dropped or everything was asked for. Best effort: a refused request only leaves the computation to
    /// fault the pages in.
    pub fn run(&self) {
        for (position, file, range) in &self.requests {
            let Ok(mut reached) = self.reached.lock() else {
                return;
            };
            while *reached != usize::MAX && *position >= reached.saturating_add(self.ahead) {
                let Ok(next) = self.moved.wait(reached) else {
                    return;
                };
                reached = next;
            }
            if *reached == usize::MAX {
                return;
            }
            drop(reached);
            file.read_ahead(range.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Prefetch;
    use crate::read::Checkpoint;
    use crate::test_support::fixture_dir;

    #[test]
    fn inputs_are_asked_for_once_in_the_order_they_are_consumed() {
        let checkpoint = Checkpoint::open(fixture_dir("gpt2-tiny")).unwrap();
        let [wte, wpe, ln] = [
            "transformer.wte.weight",
            "transformer.wpe.weight",
            "transformer.ln_f.weight",
        ];
        let len = |name| {
            let info = checkpoint.info(name).unwrap();
            info.end - info.start
        };
        let order = [
            ("b", vec![(&checkpoint, wpe), (&checkpoint, wte)]),
            ("a", vec![(&checkpoint, wte), (&checkpoint, ln)]),
        ];
        let prefetch = Prefetch::new(&order);
        let ranges: Vec<_> = prefetch
            .requests
            .iter()
            .map(|(_, _, r)| r.clone())
            .collect();
        let bytes = |name| {
            let info = checkpoint.info(name).unwrap();
            info.start..info.end
        };
        assert_eq!(ranges, [bytes(wpe), bytes(wte), bytes(ln)]);
        let positions: Vec<_> = prefetch.requests.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(positions, [0, len(wpe), len(wpe) + len(wte)]);
        assert_eq!(prefetch.ends["b"], len(wpe) + len(wte));
        assert_eq!(prefetch.ends["a"], len(wpe) + len(wte) + len(ln));
    }

    #[test]
    fn waiting_ahead_of_the_computation_ends_when_it_finishes() {
        let checkpoint = Checkpoint::open(fixture_dir("gpt2-tiny")).unwrap();
        let order = [
            ("a", vec![(&checkpoint, "transformer.wte.weight")]),
            ("b", vec![(&checkpoint, "transformer.wpe.weight")]),
        ];
        // Nothing may be asked for beyond the current tensor, so `run` waits at "b".
        let prefetch = Prefetch::ahead_by(&order, 0);
        std::thread::scope(|scope| {
            let running = scope.spawn(|| prefetch.run());
            prefetch.reached("a");
            drop(prefetch.finish_on_drop());
            running.join().unwrap();
        });
    }
}
