//! Exact step budgets: a data loader that yields exactly N batches, cycling the loader it wraps
//! (a shuffled Burn loader reshuffles at every pass). One `SupervisedTraining::launch` of one
//! epoch over it runs exactly N training iterations, so N = steps × batches per step gives an
//! exact number of optimizer steps (Burn's `Interrupter` overshoots: see BURN-0.22.md).

use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;

/// Counts work as batches go by: called once per yielded batch (e.g. training FLOPs).
pub type BatchCounter<O> = Arc<dyn Fn(&O) -> f64 + Send + Sync>;

/// Exactly `batches` batches from `inner`, restarting `inner` whenever it runs out. Its items
/// are batches: `num_items` is `batches`, and the progress unit is "batches".
pub struct ExactBatches<O> {
    inner: Arc<dyn DataLoader<O>>,
    batches: usize,
    counter: Option<(BatchCounter<O>, Arc<Mutex<f64>>)>,
}

impl<O> Clone for ExactBatches<O> {
    fn clone(&self) -> Self {
        ExactBatches {
            inner: self.inner.clone(),
            batches: self.batches,
            counter: self.counter.clone(),
        }
    }
}

impl<O: 'static> ExactBatches<O> {
    /// Exactly `batches` batches from `inner`.
    pub fn new(inner: Arc<dyn DataLoader<O>>, batches: usize) -> Self {
        ExactBatches {
            inner,
            batches,
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

struct Iter<'a, O> {
    loader: &'a ExactBatches<O>,
    current: Box<dyn DataLoaderIterator<O> + 'a>,
    yielded: usize,
    /// Consecutive restarts of `inner` that yielded nothing (an empty loader).
    empty_restarts: usize,
}

impl<O> Iterator for Iter<'_, O> {
    type Item = Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.yielded >= self.loader.batches {
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
        Progress::new(
            self.yielded,
            self.loader.batches,
            Some("batches".to_string()),
        )
    }
}

impl<O: Send + 'static> DataLoader<O> for ExactBatches<O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        Box::new(Iter {
            loader: self,
            current: self.inner.iter(),
            yielded: 0,
            empty_restarts: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.batches
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        Arc::new(ExactBatches {
            inner: self.inner.to_device(device),
            batches: self.batches,
            counter: self.counter.clone(),
        })
    }

    /// Batches `start..end` of this loader's `batches`, drawn from the matching share of the
    /// wrapped loader's items (how Burn's multi-device strategies split the data per device).
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        let (start, end) = (start.min(self.batches), end.min(self.batches));
        let items = self.inner.num_items();
        let scale = |b: usize| (b * items).checked_div(self.batches).unwrap_or(0);
        Arc::new(ExactBatches {
            inner: self.inner.slice(scale(start), scale(end)),
            batches: end.saturating_sub(start),
            counter: self.counter.clone(),
        })
    }
}
