//! One input tensor of an output tensor, read row by row from its checkpoint.

use safetensors::Dtype;

use super::missing;
use crate::dtype::{self, Float, element_size};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::read::Checkpoint;

/// One input tensor of an output tensor: its bytes, its dtype, and the bytes of one row.
pub(super) struct Source<'a> {
    pub(super) name: &'a str,
    bytes: &'a [u8],
    pub(super) dtype: Dtype,
    pub(super) row_bytes: usize,
}

impl<'a> Source<'a> {
    pub(super) fn open(
        plan: &Plan,
        checkpoint: &'a Checkpoint,
        name: &'a str,
        row_len: usize,
    ) -> Result<Self> {
        let info = checkpoint
            .info(name)
            .ok_or_else(|| missing(plan, name, checkpoint))?;
        if !dtype::is_float(info.dtype) {
            return Err(Error::UnsupportedDtype {
                tensor: name.to_string(),
                dtype: info.dtype,
            });
        }
        let bytes = checkpoint
            .bytes(name)
            .ok_or_else(|| missing(plan, name, checkpoint))?;
        Ok(Source {
            name,
            bytes,
            dtype: info.dtype,
            row_bytes: row_len * element_size(info.dtype),
        })
    }

    /// The bytes of row `j`.
    pub(super) fn row(&self, j: usize) -> Result<&'a [u8]> {
        let start = j * self.row_bytes;
        self.bytes
            .get(start..start + self.row_bytes)
            .ok_or_else(|| Error::BadAxis {
                tensor: self.name.to_string(),
                axis: 0,
                shape: Vec::new(),
                reason: format!(
                    "row {j} lies beyond the tensor's {} bytes",
                    self.bytes.len()
                ),
            })
    }

    /// Decodes row `j` into `out`.
    pub(super) fn decode_row<T: Float>(&self, j: usize, out: &mut [T]) -> Result<()> {
        dtype::decode_into(self.dtype, self.row(j)?, out).ok_or_else(|| self.unsupported())
    }

    pub(super) fn unsupported(&self) -> Error {
        Error::UnsupportedDtype {
            tensor: self.name.to_string(),
            dtype: self.dtype,
        }
    }
}
