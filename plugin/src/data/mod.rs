//! Data for the bundled models: byte-level text windows for the language models, labelled
//! images for the ViT. Any Burn data pipeline yielding the same batches works as well.

pub(crate) mod images;
pub(crate) mod text;

pub use images::{Digits, ImageBatch, ImageBatcher, LabelledImage};
pub use text::{
    BYTE_VOCAB, ByteWindows, LmBatch, LmBatcher, MlmBatch, MlmBatcher, next_token_output,
    split_train_valid,
};
