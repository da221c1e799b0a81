//! Coalesce, de-coalesce and interpolate transformer checkpoints between model sizes.
//!
//! The pipeline is read → plan → execute → write: a [`Checkpoint`] memory-maps safetensors
//! files, an [`Anatomy`] claims every tensor with [`Rules`] (a preset or a rule file), a
//! [`Plan`] has one entry per output tensor, and the executor computes and writes them one at a
//! time. A [`Job`] ties the steps together for the CLI and the Burn plugin:
//!
//! ```no_run
//! use vcycle_transform::{Job, Options, Target};
//!
//! let options = Options {
//!     target: Target { heads: Some(6), layers: Some(6), ..Target::default() },
//!     ..Options::default()
//! };
//! Job::coalesce("bert-base".as_ref(), &options)?.write("bert-small".as_ref(), false)?;
//! # Ok::<(), vcycle_transform::Error>(())
//! ```
//!
//! The operators are defined in docs/operator-contract.md §3. Beside the job, the library
//! exports the rules ([`rules`]), `config.json` rewriting ([`config`]), the reference forward
//! pass that checks a conversion ([`verify`]) and the report of `vcycle inspect` ([`inspect`]).
//! The modules marked hidden are the implementation, public for the fuzz targets and tests.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod anatomy;
pub mod config;
#[doc(hidden)]
pub mod convert;
#[doc(hidden)]
pub mod dtype;
mod error;
#[doc(hidden)]
pub mod execute;
#[doc(hidden)]
pub mod fixture;
#[doc(hidden)]
pub mod forward;
pub mod inspect;
#[doc(hidden)]
pub mod ops;
#[doc(hidden)]
pub mod plan;
mod progress;
#[doc(hidden)]
pub mod read;
pub mod rules;
#[doc(hidden)]
pub mod scheme;
#[doc(hidden)]
pub mod similar;
#[doc(hidden)]
pub mod symmetry;
#[cfg(test)]
mod test_support;
pub mod verify;
#[doc(hidden)]
pub mod write;

pub use anatomy::{Anatomy, ArchChoice, Dims, EmbeddingRule};
pub use convert::{Job, Options, open_model};
pub use error::{Error, Result};
pub use plan::{AlphaRange, DepthInit, Operator, Plan, Target};
pub use progress::Progress;
pub use read::Checkpoint;
/// Reads a small text file that must be a regular file.
pub use read::read_regular;
pub use rules::Rules;
pub use scheme::{Grouping, SchemeSpec};
/// The file policy every output follows, shared with the Burn plugin: whole or not at all,
/// and the leftovers of killed writes swept.
pub use write::{replace_atomically, sweep_leftovers};
