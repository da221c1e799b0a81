//! The multi-level V-cycle (docs/operator-contract.md §4) inside Burn's own training loop.
//!
//! Train the full model a little, coalesce it into a smaller one (the transform library,
//! `vcycle_transform`), train that, grow it back (de-coalesce + interpolate with the saved
//! weights) and continue. Each segment is one `SupervisedTraining::launch`: the driver
//! ([`VCycle`]) creates it over a data loader sized to the segment's exact step budget and hands
//! it to the user's closure, which adds metrics, renderer and devices; at every boundary the
//! driver exports the model as a HuggingFace directory, calls the transform, builds the next
//! model from its output with a fresh optimizer and scheduler, and records a resumable state.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use burn::train::{SupervisedTraining, metric::LossMetric};
//! # use vcycle_plugin::{Gpt2, Gpt2Config, LevelConfig, ProgressLine, Segment, VCycle, VCycleConfig};
//! # fn demo(train: burn::train::TrainLoader<Gpt2>, valid: burn::train::ValidLoader<Gpt2>)
//! # -> vcycle_plugin::Result<()> {
//! let device = burn::tensor::Device::flex().autodiff();
//! let model = Gpt2Config::new(256, 128, 128, 4, 4, 512).init(&device)?;
//! let config = VCycleConfig::new(
//!     vec![
//!         LevelConfig::new(1e-3).with_warmup_steps(50),
//!         LevelConfig::new(2e-3).with_heads(Some(2)).with_layers(Some(2)),
//!     ],
//!     200, // steps at the full size before coalescing
//!     600, // steps at the bottom
//!     400, // steps after growing back
//! );
//! let outcome = VCycle::new(config, "runs/gpt", device)?
//!     .on_boundary(|record| println!("{record}")) // each boundary as it completes
//!     .run(model, train, valid, |_, training| {
//!         training
//!             .metric_train_numeric(LossMetric::new())
//!             .metric_valid_numeric(LossMetric::new())
//!             .renderer(Box::new(ProgressLine::new())) // one line per 2 s, fit for logs
//!     })?;
//! println!("final model: {}", outcome.final_dir.display());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod checkpoint;
mod cycle;
pub mod data;
pub mod device;
mod error;
mod models;

pub use checkpoint::layout::CheckpointLayout;
/// Adam's moments across a boundary, as the driver saves them (for tests that inspect them).
#[doc(hidden)]
pub use checkpoint::moments;
pub use checkpoint::resizable::Resizable;
pub use checkpoint::sizes::Sizes;
pub use cycle::budget::{ExactBatches, epoch_steps};
pub use cycle::config::{
    DecaySegments, LevelConfig, OptimizerStatePolicy, PathSegment, VCycleConfig, Wsd,
};
pub use cycle::flops::{SequenceBatch, sequence_flop_counter, train_flops};
pub use cycle::progress::{ProgressLine, ValidHistory, ValidPoint};
pub use cycle::schedule::{Decay, Schedule};
pub use cycle::{
    BoundaryRecord, FlopCounter, ModelSize, Operator, Phase, Segment, VCycle, VCycleModel,
    VCycleOutcome, default_optimizer,
};
pub use error::{Error, Result};
pub use models::bert::{Bert, BertConfig};
pub use models::gpt2::{Gpt2, Gpt2Config};
pub use models::llama::{Llama, LlamaConfig};
pub use models::vit::{Vit, VitConfig};
/// The transform library's sizes of a model, which [`Sizes`] holds.
pub use vcycle_transform::Dims;
/// The transform library's architecture choice and rule files, for [`Resizable::arch`].
pub use vcycle_transform::{ArchChoice, Rules};
/// The transform library's options, as a [`VCycleConfig`] and a [`LevelConfig`] take them.
pub use vcycle_transform::{DepthInit, EmbeddingRule, SchemeSpec};
