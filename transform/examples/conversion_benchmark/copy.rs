//! The baseline a conversion's time is compared with: a plain copy of the same bytes through
//! the conversion's own writer, replaying the input files block by block.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use vcycle_transform::dtype;
use vcycle_transform::execute::Block;
use vcycle_transform::write::{self, OutputForm};

use crate::conversion::plan_only;

/// A plain copy of the same bytes through the conversion's own writer: reads every input
/// safetensors file and writes what it read as the conversion's output tensors (the same
/// header, the same writer and fsync; the inputs are read again from the start when the output
/// is larger), so the ratio to it is what computing the values costs.
pub fn copy(op: &str, inputs: &[String], small: [&String; 3], output: &Path) -> Result<()> {
    let plan = plan_only(op, inputs, small)?;
    let mut files = Vec::new();
    for input in inputs {
        for entry in std::fs::read_dir(input)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "safetensors") {
                files.push(path);
            }
        }
    }
    files.sort();
    let replay = Mutex::new(Replay::new(files)?);
    let form = OutputForm::Directory {
        config: None,
        extra_files: Vec::new(),
        shard_size: None,
    };
    write::write_output(
        output,
        &write::OutputPolicy::new(&[], true)?,
        &form,
        &plan.tensors,
        &BTreeMap::new(),
        &[],
        &|t, sink| {
            let mut replay = replay
                .lock()
                .map_err(|_| vcycle_transform::Error::Incompatible {
                    tensor: t.name.clone(),
                    reason: "the reader panicked".into(),
                })?;
            let mut left = dtype::byte_len(t.dtype, &t.shape).unwrap_or(0);
            let mut block = Block::default();
            while left > 0 {
                replay.next(left, &mut block)?;
                left -= block.bytes().len();
                sink(&mut block)?;
            }
            Ok(())
        },
    )?;
    let mut replay = replay
        .into_inner()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    replay.read_to_end()?;
    Ok(())
}

/// The bytes of a list of files, in order, read in blocks, from the start again after the last.
struct Replay {
    files: Vec<PathBuf>,
    current: usize,
    file: File,
    wrapped: bool,
}

impl Replay {
    /// The executor's block size.
    const BLOCK: usize = 4 << 20;

    fn new(files: Vec<PathBuf>) -> Result<Self> {
        let first = files.first().context("no input file")?;
        Ok(Replay {
            file: File::open(first)?,
            files,
            current: 0,
            wrapped: false,
        })
    }

    /// Up to `max` bytes of the next block, into `block` (reused as the executor reuses its
    /// blocks).
    fn next(&mut self, max: usize, block: &mut Block) -> vcycle_transform::Result<()> {
        let len = max.min(Self::BLOCK);
        loop {
            let n = self.read(block.fill(len))?;
            if n > 0 {
                block.fill(n);
                return Ok(());
            }
            self.open_next()?;
        }
    }

    /// Reads what the copy has not read yet of the inputs: every input byte is read.
    fn read_to_end(&mut self) -> vcycle_transform::Result<()> {
        let mut block = vec![0; Self::BLOCK];
        while !self.wrapped {
            if self.read(&mut block)? == 0 {
                self.open_next()?;
            }
        }
        Ok(())
    }

    fn read(&mut self, block: &mut [u8]) -> vcycle_transform::Result<usize> {
        self.file
            .read(block)
            .map_err(|source| vcycle_transform::Error::Io {
                path: self.files[self.current].clone(),
                source,
            })
    }

    fn open_next(&mut self) -> vcycle_transform::Result<()> {
        self.current = (self.current + 1) % self.files.len();
        self.wrapped |= self.current == 0;
        let path = &self.files[self.current];
        self.file = File::open(path).map_err(|source| vcycle_transform::Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(())
    }
}
