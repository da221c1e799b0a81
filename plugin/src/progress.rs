//! A compact progress display for training runs: one line every few seconds with the batch
//! count and the latest numeric metrics, and one line at the end of each split. Works in a
//! terminal and in CI logs alike (Burn's TUI needs a terminal; its plain renderer prints a line
//! per batch). Pass it with `SupervisedTraining::renderer(Box::new(ProgressLine::new()))`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::train::LearnerSummary;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

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
        }
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
