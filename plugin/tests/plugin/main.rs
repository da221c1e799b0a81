//! The plugin's integration tests: one test binary, shared helpers in `support`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bert_hf;
mod carry;
mod gpt2_hf;
mod killed_write;
mod layout;
mod llama_hf;
mod paths;
mod resume;
mod rules_proof;
mod support;
mod vcycle_run;
mod vit_hf;
#[cfg(feature = "wgpu")]
mod vulkan;
