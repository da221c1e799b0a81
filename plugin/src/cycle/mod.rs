//! The driver: a path of model sizes trained segment by segment, each an exact budget inside
//! Burn's own `SupervisedTraining`, joined by the transform library's operators, with a
//! run-long learning-rate schedule, a FLOP count and a resumable run directory.

pub(crate) mod budget;
pub(crate) mod config;
mod driver;
pub(crate) mod flops;
pub(crate) mod progress;
mod proof;
mod record;
mod run_dir;
pub(crate) mod schedule;
mod segment;
mod step_counter;
mod train;
mod transition;

pub use driver::{FlopCounter, VCycle, VCycleModel};
pub use record::{BoundaryRecord, ModelSize, VCycleOutcome};
pub use segment::{Phase, Segment};
pub use train::default_optimizer;
pub use transition::Operator;
