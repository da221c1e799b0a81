//! The bundled models: GPT-2, BERT and Llama language models and a ViT classifier, each
//! loading and saving its HuggingFace checkpoint layout.

mod attention;
pub(crate) mod bert;
pub(crate) mod gpt2;
mod init;
pub(crate) mod llama;
mod steps;
pub(crate) mod vit;
