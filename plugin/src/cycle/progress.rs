//! A compact progress display for training runs: one line every few seconds with the batch
//! count and the latest numeric metrics, and one line at the end of each split. Works in a
//! terminal and in CI logs alike (Burn's TUI needs a terminal; its plain renderer prints a line
//! per batch). Pass it with `SupervisedTraining::renderer(Box::new(ProgressLine::new()))`.
//! With [`ProgressLine::recording`] it also keeps every validation pass's epoch means in a
//! [`ValidHistory`] shared across trainings (the V-cycle's segments): a validation curve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::train::LearnerSummary;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use serde::Serialize;

/// One validation pass, as a [`ValidHistory`] records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidPoint {
    /// The training's label (the V-cycle's segment name, e.g. `03-up-L1`).
    pub label: String,
    /// 1-based validation pass within that training (its epoch).
    pub pass: usize,
    /// The pass's means of the numeric validation metrics, by metric name (e.g. `Loss`).
    pub metrics: Vec<(String, f64)>,
    /// Seconds since the history was created, less the time spent in validation passes: the
    /// training's own wall time (boundary transforms included).
    pub seconds: f64,
}

impl ValidPoint {
    /// The mean of the metric called `name`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.iter().find(|(n, _)| n == name).map(|m| m.1)
    }
}

/// Validation passes recorded by [`ProgressLine`]s, in order; clones share the record.
#[derive(Clone)]
pub struct ValidHistory(Arc<Mutex<HistoryState>>);

struct HistoryState {
    clock: Instant,
    valid_seconds: f64,
    points: Vec<ValidPoint>,
}

impl Default for ValidHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl ValidHistory {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        ValidHistory(Arc::new(Mutex::new(HistoryState {
            clock: Instant::now(),
            valid_seconds: 0.0,
            points: Vec::new(),
        })))
    }

    /// The passes so far.
    pub fn points(&self) -> Vec<ValidPoint> {
        self.0.lock().map(|h| h.points.clone()).unwrap_or_default()
    }

    /// Training seconds so far: time since creation less the validation passes.
    pub fn seconds(&self) -> f64 {
        self.0
            .lock()
            .map(|h| h.clock.elapsed().as_secs_f64() - h.valid_seconds)
            .unwrap_or(f64::NAN)
    }

    fn push(&self, label: &str, metrics: Vec<(String, f64)>, validating: Duration) {
        if let Ok(mut h) = self.0.lock() {
            let validating = validating.as_secs_f64();
            let seconds = h.clock.elapsed().as_secs_f64() - h.valid_seconds - validating;
            h.valid_seconds += validating;
            let pass = h.points.iter().filter(|p| p.label == label).count() + 1;
            h.points.push(ValidPoint {
                label: label.to_string(),
                pass,
                metrics,
                seconds,
            });
        }
    }
}

/// Prints progress lines to stdout.
pub struct ProgressLine {
    label: String,
    split: String,
    total: usize,
    done: usize,
    every: Duration,
    last: Option<Instant>,
    started: Instant,
    quiet: bool,
    names: HashMap<MetricId, String>,
    train: Vec<(String, f64)>,
    valid: Vec<(String, f64)>,
    history: Option<ValidHistory>,
    valid_started: Option<Instant>,
    valid_means: Vec<(String, f64)>,
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressLine {
    /// A line every 2 seconds.
    pub fn new() -> Self {
        ProgressLine {
            label: "training".into(),
            split: String::new(),
            total: 0,
            done: 0,
            every: Duration::from_secs(2),
            last: None,
            started: Instant::now(),
            quiet: false,
            names: HashMap::new(),
            train: Vec::new(),
            valid: Vec::new(),
            history: None,
            valid_started: None,
            valid_means: Vec::new(),
        }
    }

    /// Also records every validation pass's metric means into `history`.
    pub fn recording(mut self, history: ValidHistory) -> Self {
        self.history = Some(history);
        self
    }

    /// Prints nothing (for tests).
    pub fn quiet() -> Self {
        ProgressLine {
            quiet: true,
            ..Self::new()
        }
    }

    /// A line every `every` instead.
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    fn metrics(values: &[(String, f64)]) -> String {
        values
            .iter()
            .map(|(name, v)| format!("{name} {v:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print(&self) {
        if self.quiet {
            return;
        }
        let values = if self.split == "valid" {
            &self.valid
        } else {
            &self.train
        };
        println!(
            "[{}] {} {}/{} ({:.0} s) {}",
            self.label,
            self.split,
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64(),
            Self::metrics(values)
        );
    }

    fn record(names: &HashMap<MetricId, String>, into: &mut Vec<(String, f64)>, s: MetricState) {
        if let MetricState::Numeric(entry, Some(value)) = s {
            let mut name = names
                .get(&entry.metric_id)
                .cloned()
                .unwrap_or_else(|| "metric".into());
            if matches!(value, NumericEntry::Final(_)) {
                name.push_str(" (mean)");
            }
            let v = value.current();
            match into.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = v,
                None => into.push((name, v)),
            }
        }
    }
}

impl MetricsRendererTraining for ProgressLine {
    fn update_train(&mut self, state: MetricState) {
        Self::record(&self.names, &mut self.train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, Some(NumericEntry::Final(mean))) = &state {
            let name = self
                .names
                .get(&entry.metric_id)
                .cloned()
                .unwrap_or_else(|| "metric".into());
            self.valid_means.push((name, *mean));
        }
        Self::record(&self.names, &mut self.valid, state);
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for ProgressLine {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn on_test_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for ProgressLine {
    fn start(
        &mut self,
        _total_epochs: usize,
        _starting_epoch: usize,
        _total_items: Option<usize>,
        label: Option<&str>,
    ) {
        if let Some(label) = label {
            self.label = label.to_string();
        }
        self.started = Instant::now();
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.total = total_items;
        self.done = 0;
        self.last = Some(Instant::now());
        if split == "valid" {
            self.valid.clear();
            self.valid_means.clear();
            self.valid_started = Some(Instant::now());
        }
    }

    fn update_split(&mut self, items_processed: usize) {
        self.done = items_processed;
        let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            self.last = Some(Instant::now());
            self.print();
        }
    }

    fn end_split(&mut self) {
        self.print();
        if self.split == "valid"
            && let (Some(history), Some(started)) = (&self.history, self.valid_started.take())
        {
            history.push(
                &self.label,
                std::mem::take(&mut self.valid_means),
                started.elapsed(),
            );
        }
    }

    fn end(&mut self) {}

    /// Burn reports every iteration as an event; the periodic line already shows progress.
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for ProgressLine {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for ProgressLine {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
