//! Every error case: exit code 2, a message naming the cause, and nothing written. This file
//! defines the check every refusal passes; the cases are in `errors/`: the arguments, the
//! inputs, the output.

mod arguments;
mod inputs;
mod output;

use crate::util::{Run, Sandbox, assert_mentions, assert_nothing_written};

/// Runs `args` in the sandbox and requires exit code 2, every needle in stderr, and no
/// trace of `output` (relative to the sandbox).
fn refuses(sb: &Sandbox, args: &[&str], output: &str, needles: &[&str]) -> Run {
    let run = sb.run(args);
    assert_eq!(run.code, 2, "expected exit code 2:\n{run}");
    assert_mentions(&run, needles);
    assert!(
        run.stdout.is_empty(),
        "an error prints nothing on stdout:\n{run}"
    );
    assert_nothing_written(&sb.path(output));
    run
}
