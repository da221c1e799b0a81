//! Exact step budgets: a data loader that yields exactly N batches, cycling the loader it wraps
//! (a shuffled Burn loader reshuffles at every pass). One `SupervisedTraining::launch` of one
//! epoch over it runs exactly N training iterations, so N = steps × batches per step gives an
//! exact number of optimizer steps (Burn's `Interrupter` overshoots: see BURN-0.22.md).
//! The budget may also be split into several epochs of given sizes, so Burn validates between
//! them (a validation curve within one launch, optimizer state kept).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;

/// `steps` as epochs of `every` steps, the last taking the remainder (one epoch when `every`
/// is None, zero, or not smaller than `steps`).
pub fn epoch_steps(steps: usize, every: Option<usize>) -> Vec<usize> {
    match every {
        Some(every) if every > 0 && steps > every => {
            let mut chunks = vec![every; steps / every];
            if !steps.is_multiple_of(every) {
                chunks.push(steps % every);
            }
            chunks
        }
        _ => vec![steps],
    }
}

/// Counts work as batches go by: called once per yielded batch (e.g. training FLOPs).
pub type BatchCounter<O> = Arc<dyn Fn(&O) -> f64 + Send + Sync>;

/// Exactly `batches` batches from `inner`, restarting `inner` whenever it runs out. Its items
/// are batches: `num_items` is `batches`, and the progress unit is "batches".
pub struct ExactBatches<O> {
    inner: Arc<dyn DataLoader<O>>,
    /// Batches of each pass (epoch), in order; `iter` serves them one after the other and the
    /// last one again once all were served.
    passes: Arc<[usize]>,
    /// Passes started so far (shared by clones: Burn may clone a loader between epochs).
    started: Arc<AtomicUsize>,
    counter: Option<(BatchCounter<O>, Arc<Mutex<f64>>)>,
}

impl<O> Clone for ExactBatches<O> {
    fn clone(&self) -> Self {
        ExactBatches {
            inner: self.inner.clone(),
            passes: self.passes.clone(),
            started: self.started.clone(),
            counter: self.counter.clone(),
        }
    }
}

impl<O: 'static> ExactBatches<O> {
    /// Exactly `batches` batches from `inner`.
    pub fn new(inner: Arc<dyn DataLoader<O>>, batches: usize) -> Self {
        Self::in_passes(inner, vec![batches])
    }

    /// `passes[i]` batches at the i-th `iter()` (the i-th epoch): run it with
    /// `num_epochs(passes.len())`. An empty list means one empty pass.
    pub fn in_passes(inner: Arc<dyn DataLoader<O>>, passes: Vec<usize>) -> Self {
        let passes = if passes.is_empty() { vec![0] } else { passes };
        ExactBatches {
            inner,
            passes: passes.into(),
            started: Arc::new(AtomicUsize::new(0)),
            counter: None,
        }
    }

    /// Adds `count(batch)` into `total` for every batch yielded.
    pub fn with_counter(mut self, count: BatchCounter<O>, total: Arc<Mutex<f64>>) -> Self {
        self.counter = Some((count, total));
        self
    }

    /// As a Burn data loader.
    pub fn into_loader(self) -> Arc<dyn DataLoader<O>>
    where
        O: Send,
    {
        Arc::new(self)
    }
}

impl<O> ExactBatches<O> {
    /// The size of pass `index` (the last one once all were served).
    fn pass_size(&self, index: usize) -> usize {
        let last = self.passes.len().saturating_sub(1);
        self.passes.get(index.min(last)).copied().unwrap_or(0)
    }
}

struct Iter<'a, O> {
    loader: &'a ExactBatches<O>,
    current: Box<dyn DataLoaderIterator<O> + 'a>,
    /// Batches of this pass.
    batches: usize,
    yielded: usize,
    /// Consecutive restarts of `inner` that yielded nothing (an empty loader).
    empty_restarts: usize,
}

impl<O> Iterator for Iter<'_, O> {
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.yielded >= self.batches {
            return None;
        }
        loop {
            match self.current.next() {
                Some(Ok(batch)) => {
                    self.yielded += 1;
                    self.empty_restarts = 0;
                    if let Some((count, total)) = &self.loader.counter {
                        let work = count(&batch);
                        if let Ok(mut t) = total.lock() {
                            *t += work;
                        }
                    }
                    return Some(Ok(batch));
                }
                Some(Err(e)) => return Some(Err(e)),
                None if self.empty_restarts > 0 => {
                    return Some(Err(DatasetError::new(std::io::Error::other(
                        "the training data loader yields no batches",
                    ))));
                }
                None => {
                    self.empty_restarts += 1;
                    self.current = self.loader.inner.iter();
                }
            }
        }
    }
}

impl<O> DataLoaderIterator<O> for Iter<'_, O> {
    fn progress(&self) -> Progress {
        Progress::new(self.yielded, self.batches, Some("batches".to_string()))
    }
}

impl<O: Send + 'static> DataLoader<O> for ExactBatches<O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let pass = self.started.fetch_add(1, Ordering::Relaxed);
        Box::new(Iter {
            loader: self,
            current: self.inner.iter(),
            batches: self.pass_size(pass),
            yielded: 0,
            empty_restarts: 0,
        })
    }

    /// The size of the next pass.
    fn num_items(&self) -> usize {
        self.pass_size(self.started.load(Ordering::Relaxed))
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        Arc::new(ExactBatches {
            inner: self.inner.to_device(device),
            passes: self.passes.clone(),
            started: self.started.clone(),
            counter: self.counter.clone(),
        })
    }

    /// Batches `start..end` of every pass (`start..end` indexes the next pass's batches, the
    /// others are cut in the same proportion), drawn from the matching share of the wrapped
    /// loader's items (how Burn's multi-device strategies split the data per device).
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        let reference = self.num_items();
        let (start, end) = (start.min(reference), end.min(reference));
        let items = self.inner.num_items();
        let scale = |b: usize, of: usize| (b * of).checked_div(reference).unwrap_or(0);
        let passes: Vec<usize> = self
            .passes
            .iter()
            .map(|&p| scale(end, p).saturating_sub(scale(start, p)))
            .collect();
        Arc::new(ExactBatches {
            inner: self.inner.slice(scale(start, items), scale(end, items)),
            passes: passes.into(),
            started: Arc::new(AtomicUsize::new(0)),
            counter: self.counter.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::epoch_steps;

    #[test]
    fn epochs_cover_the_steps_with_the_remainder_last() {
        assert_eq!(epoch_steps(100, Some(30)), vec![30, 30, 30, 10]);
        assert_eq!(epoch_steps(90, Some(30)), vec![30, 30, 30]);
        assert_eq!(epoch_steps(20, Some(30)), vec![20]);
        assert_eq!(epoch_steps(20, None), vec![20]);
        assert_eq!(epoch_steps(20, Some(0)), vec![20]);
    }
}
