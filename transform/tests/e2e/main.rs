//! End-to-end tests of the `vcycle` CLI: every test runs the compiled binary in its own
//! temporary directory on the bundled fixtures and checks the files it writes by parsing them
//! with the `safetensors` crate, independently of the library's reader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod corpus;
mod custom_rules;
mod depth_init;
mod dryrun;
mod dtypes;
mod errors;
mod interpolate;
mod leftovers;
mod malformed;
mod minilm;
mod outputs;
mod quiet;
mod robustness;
mod roundtrip;
mod sharded;
mod similar;
mod snapshots;
mod symmetry;
mod util;
mod verify;
