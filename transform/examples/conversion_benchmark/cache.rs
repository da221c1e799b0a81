//! Where the inputs are when a run starts: in the page cache (read through before every run) or
//! on disk only (`--cold`: the page cache dropped before every run).

use std::fs::File;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Where the inputs are when a run starts.
#[derive(Clone, Copy)]
pub enum Cache {
    /// In the page cache: read through before every run.
    Warm,
    /// On disk only: the page cache is dropped before every run (needs root).
    Cold,
}

impl Cache {
    pub fn describe(self) -> &'static str {
        match self {
            Cache::Warm => "inputs in the page cache (warm)",
            Cache::Cold => "inputs on disk (cold: the page cache dropped before each run)",
        }
    }

    /// Called before each run. Every output is fsynced, so dropping the cache loses nothing.
    pub fn prepare(self, inputs: &[PathBuf]) -> Result<()> {
        match self {
            Cache::Warm => {
                for dir in inputs {
                    for entry in std::fs::read_dir(dir)? {
                        let path = entry?.path();
                        std::io::copy(&mut File::open(&path)?, &mut std::io::sink())
                            .with_context(|| format!("reading {}", path.display()))?;
                    }
                }
            }
            Cache::Cold => {
                std::fs::write("/proc/sys/vm/drop_caches", "3").context(
                    "--cold drops the page cache: it needs root (writing /proc/sys/vm/drop_caches)",
                )?;
            }
        }
        Ok(())
    }
}
