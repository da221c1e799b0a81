//! What a conversion prints on stderr: `--quiet` silences everything but errors, and a stderr
//! that is not a terminal never gets progress bar drawing, however long the conversion.

use std::process::Command;

use crate::util::{Sandbox, VCYCLE, fixture};

/// Coalescing into groups of unequal size, which warns (norm statistics change).
fn unequal_coalesce(sandbox: &Sandbox, out: &str, extra: &[&str]) -> (i32, String) {
    let output = Command::new(VCYCLE)
        .args(extra)
        .args(["coalesce", &fixture("gpt2-tiny"), "--layers", "2"])
        .args(["--depth-scheme", "[[0,1,2],[3]]", "-o", out])
        .current_dir(sandbox.root())
        // The bar would be drawn from the first tensor on, were stderr a terminal.
        .env("VCYCLE_PROGRESS_AFTER_MS", "0")
        .output()
        .expect("the vcycle binary can be started");
    assert!(sandbox.path(out).is_dir(), "{out} was not written");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn quiet_prints_nothing_on_stderr_not_even_warnings() {
    let sandbox = Sandbox::new();
    for (out, flags) in [("a", ["--quiet"]), ("b", ["-q"])] {
        let (code, stderr) = unequal_coalesce(&sandbox, out, &flags);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stderr, "", "{flags:?}");
    }
}

#[test]
fn a_stderr_that_is_not_a_terminal_gets_no_progress_bar() {
    let sandbox = Sandbox::new();
    let (code, stderr) = unequal_coalesce(&sandbox, "out", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: groups of unequal size"),
        "{stderr}"
    );
    for line in stderr.lines() {
        assert!(
            line.starts_with("warning: ") || line.starts_with("wrote out "),
            "unexpected stderr line {line:?}"
        );
    }
    assert!(!stderr.contains(['\r', '\u{1b}', '=']), "{stderr:?}");
}
