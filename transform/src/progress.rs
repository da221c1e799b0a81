//! Progress of a conversion, reported to whoever runs it: the CLI draws a bar, the Burn plugin
//! and the tests pass `()` and see nothing.

/// Receives the progress of [`crate::Job::write_with_progress`]: the bytes of output to write,
/// then each piece as it is written.
pub trait Progress: Sync {
    /// Called once, before any output is written, with the bytes to write.
    fn start(&self, total_bytes: u64);
    /// Called as `bytes` more bytes are written.
    fn advance(&self, bytes: u64);
}

/// No progress reporting.
impl Progress for () {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}
