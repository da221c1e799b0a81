//! Coalesce, de-coalesce and interpolate transformer checkpoints between model sizes.
//!
//! The pipeline is read → plan → execute → write:
//! [`read::Checkpoint`] memory-maps safetensors files, [`anatomy::Anatomy`] claims every tensor
//! with a rule file ([`rules::Rules`]), [`plan`] builds one entry per output tensor, and
//! [`execute`] + [`write`] compute and write them one at a time. [`convert::Job`] ties the
//! steps together for the CLI and the Burn plugin. The operators are defined in docs/operator-contract.md §3 and
//! implemented in [`ops`].

pub mod anatomy;
pub mod config;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod execute;
pub mod fixture;
pub mod forward;
pub mod inspect;
pub mod ops;
pub mod plan;
pub mod progress;
pub mod read;
pub mod rules;
pub mod scheme;
pub mod similar;
pub mod symmetry;
#[cfg(test)]
mod test_support;
pub mod verify;
pub mod write;

pub use anatomy::{Anatomy, ArchChoice, Dims, EmbeddingRule};
pub use convert::{Job, Options, open_model};
pub use error::{Error, Result};
pub use plan::{AlphaRange, DepthInit, Operator, Plan, Target};
pub use progress::Progress;
pub use read::Checkpoint;
pub use rules::Rules;
pub use scheme::{Grouping, SchemeSpec};
