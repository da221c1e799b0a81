//! One run: the baseline or a V-cycle, trained on the bundled corpus, with its validation curve
//! on the FLOPs and wall-time axes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::Device;
use burn::train::metric::{Adaptor, LossInput, LossMetric};
use burn::train::{InferenceStep, Learner, SupervisedTraining, TrainLoader, ValidLoader};
use serde::{Deserialize, Serialize};
use vcycle_plugin::data::{BYTE_VOCAB, ByteWindows, LmBatcher, MlmBatcher, split_train_valid};
use vcycle_plugin::epoch_steps;
use vcycle_plugin::{
    DepthInit, ExactBatches, LevelConfig, OptimizerStatePolicy, PathSegment, ProgressLine,
    Schedule, SchemeSpec, VCycle, VCycleConfig, VCycleModel, ValidHistory, Wsd, default_optimizer,
};

use crate::plan::{Scale, Shape, Task, Variant, WSD_DECAY_FRACTION};

/// One validation pass of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub steps: usize,
    /// Training FLOPs so far.
    pub flops: f64,
    /// Training wall-clock seconds so far (validation passes excluded, boundaries included).
    pub seconds: f64,
    pub loss: f64,
    /// 1 = the full model.
    pub level: usize,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub variant: Variant,
    pub seed: u64,
    pub points: Vec<Point>,
    pub steps: usize,
    pub flops: f64,
    pub seconds: f64,
    pub final_loss: f64,
    /// How many times the run read the training split: bytes trained on (sequences × their
    /// length) over the split's bytes. The windows overlap by half, so one pass over them
    /// reads every byte twice.
    #[serde(default)]
    pub passes: f64,
}

/// Trains `variant` from seed `seed`, with run files under `work`.
pub fn run(
    variant: &Variant,
    scale: &Scale,
    seed: u64,
    corpus: &Path,
    device: &Device,
    work: &Path,
) -> Result<RunResult> {
    let text = std::fs::read(corpus)
        .with_context(|| format!("reading the corpus {}", corpus.display()))?;
    let (train, mut valid) = split_train_valid(&text, 20, 2048);
    valid.truncate(scale.valid_bytes);
    let train_bytes = train.len();
    let train = ByteWindows::new(train, scale.seq, scale.seq / 2);
    let valid = ByteWindows::new(valid, scale.seq, scale.seq);

    let train_device = device.clone().autodiff();
    train_device.seed(seed);
    let dir = work.join(format!("{}-seed{seed}", variant.slug()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let history = ValidHistory::new();
    let (heads, layers) = (scale.heads, scale.layers);
    let run = Run {
        variant,
        scale,
        dir: &dir,
        history: &history,
        device: &train_device,
    };
    let points = match scale.task {
        Task::Gpt => {
            let train = DataLoaderBuilder::new(LmBatcher)
                .batch_size(scale.batch)
                .shuffle(seed)
                .set_device(device.clone())
                .build(train);
            let valid = DataLoaderBuilder::new(LmBatcher)
                .batch_size(scale.batch)
                .set_device(device.clone())
                .build(valid);
            let model = scale.model(heads, layers).init(&train_device)?;
            run.train(model, train, valid)?
        }
        Task::Bert => {
            let mask = BYTE_VOCAB as i64;
            let train = DataLoaderBuilder::new(MlmBatcher::new(mask, MASK_SHARE, seed))
                .batch_size(scale.batch)
                .shuffle(seed)
                .set_device(device.clone())
                .build(train);
            // The same masks at every validation pass, and for every run.
            let valid =
                DataLoaderBuilder::new(MlmBatcher::new(mask, MASK_SHARE, 0).with_fixed_masks())
                    .batch_size(scale.batch)
                    .set_device(device.clone())
                    .build(valid);
            let model = scale.bert_model(heads, layers).init(&train_device)?;
            run.train(model, train, valid)?
        }
    };
    let last = points
        .last()
        .context("the run recorded no validation pass")?;
    Ok(RunResult {
        variant: variant.clone(),
        seed,
        steps: last.steps,
        flops: last.flops,
        seconds: history.seconds(),
        final_loss: last.loss,
        passes: (last.steps * scale.batch * scale.seq) as f64 / train_bytes as f64,
        points,
    })
}

/// The share of the bytes BERT's masked-LM objective predicts.
const MASK_SHARE: f64 = 0.15;

/// What one run trains, and where.
struct Run<'a> {
    variant: &'a Variant,
    scale: &'a Scale,
    dir: &'a Path,
    history: &'a ValidHistory,
    device: &'a Device,
}

impl Run<'_> {
    /// The baseline or the V-cycle of the variant.
    fn train<M>(&self, model: M, train: TrainLoader<M>, valid: ValidLoader<M>) -> Result<Vec<Point>>
    where
        M: VCycleModel,
        <M as InferenceStep>::Output: Adaptor<LossInput>,
    {
        if self.variant.levels == 1 {
            self.baseline(model, train, valid)
        } else {
            self.vcycle(model, train, valid)
        }
    }

    /// The training every run shares: the loss metric and a silent progress line that records
    /// the validation passes.
    fn training<M>(&self, training: SupervisedTraining<M>) -> SupervisedTraining<M>
    where
        M: VCycleModel,
        <M as InferenceStep>::Output: Adaptor<LossInput>,
    {
        training
            .metric_valid_numeric(LossMetric::new())
            // A line a minute in the run's log: how far a run got if it is stopped.
            .renderer(Box::new(
                ProgressLine::new()
                    .every(std::time::Duration::from_secs(60))
                    .recording(self.history.clone()),
            ))
    }

    /// The full model alone, with the V-cycle's optimizer and level 1's schedule.
    fn baseline<M>(
        &self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
    ) -> Result<Vec<Point>>
    where
        M: VCycleModel,
        <M as InferenceStep>::Output: Adaptor<LossInput>,
    {
        let (variant, scale) = (self.variant, self.scale);
        let passes = epoch_steps(scale.baseline_steps, Some(scale.eval_every));
        let flops = Arc::new(Mutex::new(0.0));
        let loader = ExactBatches::in_passes(train, passes.clone())
            .with_counter(model.flop_counter()?, flops.clone())
            .into_loader();
        let scheduler = Schedule {
            peak: variant.lr,
            warmup: scale.warmup,
            steps: scale.baseline_steps,
            decay: variant.decay,
            floor: DECAY_FLOOR,
            // Warmup-stable-decay: the peak until the last share of the steps.
            decay_span: variant.wsd.then(|| {
                let steps = scale.baseline_steps as i64;
                let decay = (steps as f64 * WSD_DECAY_FRACTION).round() as i64;
                (steps - decay, steps)
            }),
        }
        .scheduler()?;
        let learner = Learner::new(model, default_optimizer(), scheduler);
        let result = self
            .training(SupervisedTraining::new(self.dir, loader, valid))
            .num_epochs(passes.len())
            .label("baseline")
            .launch(learner);
        if let Some(error) = result.error {
            bail!("baseline training failed: {error}");
        }
        let total = flops.lock().map(|f| *f).unwrap_or(f64::NAN);
        let per_step = total / scale.baseline_steps as f64;
        let recorded = self.history.points();
        if recorded.len() != passes.len() {
            bail!(
                "{} validation passes recorded, {} expected",
                recorded.len(),
                passes.len()
            );
        }
        let mut steps = 0;
        passes
            .iter()
            .zip(&recorded)
            .map(|(pass, point)| {
                steps += pass;
                Ok(Point {
                    steps,
                    flops: steps as f64 * per_step,
                    seconds: point.seconds,
                    loss: loss_of(point)?,
                    level: 1,
                })
            })
            .collect()
    }

    /// The variant's V-cycle, driven by the plugin.
    fn vcycle<M>(
        &self,
        model: M,
        train: TrainLoader<M>,
        valid: ValidLoader<M>,
    ) -> Result<Vec<Point>>
    where
        M: VCycleModel,
        <M as InferenceStep>::Output: Adaptor<LossInput>,
    {
        let (variant, scale) = (self.variant, self.scale);
        let budget = variant.budget(scale)?;
        let sizes = variant.sizes(scale)?;
        let width_scheme: SchemeSpec = variant.width_scheme.parse().map_err(anyhow::Error::msg)?;
        let depth_scheme: SchemeSpec = variant.depth_scheme.parse().map_err(anyhow::Error::msg)?;
        let levels = sizes
            .iter()
            .enumerate()
            .map(|(i, &(heads, layers))| {
                if i == 0 {
                    LevelConfig::new(variant.lr)
                        .with_up_learning_rate(Some(variant.lr * variant.up_lr_factor))
                        .with_warmup_steps(scale.warmup)
                } else {
                    LevelConfig::new(variant.small_lr)
                        .with_warmup_steps(scale.warmup)
                        .with_heads(Some(heads))
                        .with_layers(Some(layers))
                        .with_width_scheme(width_scheme.clone())
                        .with_depth_scheme(depth_scheme.clone())
                }
            })
            .collect();
        let optimizer_state = if variant.carry_moments {
            OptimizerStatePolicy::Carry
        } else {
            OptimizerStatePolicy::Reset
        };
        let config = match variant.shape {
            Shape::VCycle => VCycleConfig::new(levels, budget.down, budget.bottom, budget.up),
            Shape::LateGrowth { .. } => VCycleConfig::new(levels, 0, 0, 0).with_path(Some(vec![
                PathSegment::new(2, budget.bottom),
                PathSegment::new(1, budget.up),
            ])),
        };
        let wsd = variant.wsd.then(|| {
            Wsd::new()
                .with_warmup_steps(scale.warmup)
                .with_decay_fraction(WSD_DECAY_FRACTION)
                .with_decay(variant.decay)
                .with_rewarm_steps(scale.warmup)
        });
        let config = config
            .with_wsd(wsd)
            .with_alpha(variant.alpha)
            .with_decay(variant.decay)
            .with_decay_floor(DECAY_FLOOR)
            .with_optimizer_state(optimizer_state)
            .with_depth_init(if variant.zero_depth_init {
                DepthInit::Zero
            } else {
                DepthInit::Copy
            })
            .with_eval_every(Some(scale.eval_every))
            .with_boundary_valid_batches(Some(4));
        let mut driver = VCycle::new(config, PathBuf::from(self.dir), self.device.clone())?;
        let segments = driver.segments();
        let outcome = driver.run(model, train, valid, |_, training| self.training(training))?;

        // FLOPs are constant per step within a segment: spread each segment's share evenly.
        let mut points = Vec::new();
        let (mut steps_before, mut flops_before) = (0, 0.0);
        let recorded = self.history.points();
        for (segment, boundary) in segments.iter().zip(&outcome.boundaries) {
            let per_step = (boundary.train_flops - flops_before) / segment.steps as f64;
            let mut steps = steps_before;
            let passes: Vec<_> = recorded
                .iter()
                .filter(|p| p.label == segment.name())
                .collect();
            if passes.len() != segment.epoch_steps.len() {
                bail!(
                    "{}: {} validation passes recorded, {} expected",
                    segment.name(),
                    passes.len(),
                    segment.epoch_steps.len()
                );
            }
            for (epoch_steps, point) in segment.epoch_steps.iter().zip(passes) {
                steps += epoch_steps;
                points.push(Point {
                    steps,
                    flops: flops_before + (steps - steps_before) as f64 * per_step,
                    seconds: point.seconds,
                    loss: loss_of(point)?,
                    level: segment.level,
                });
            }
            steps_before = boundary.steps;
            flops_before = boundary.train_flops;
        }
        Ok(points)
    }
}

fn loss_of(point: &vcycle_plugin::ValidPoint) -> Result<f64> {
    point.metric("Loss").with_context(|| {
        format!(
            "no validation loss in pass {} of {}",
            point.pass, point.label
        )
    })
}

/// Where a decay ends, as a fraction of the peak (the V-cycle driver's default too).
const DECAY_FLOOR: f64 = 0.1;
