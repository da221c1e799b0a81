//! Corpus cases that attack where the output goes: the input itself or inside it, through
//! symlinks, a read-only directory, a full disk.

use super::{Case, Entry, Kind, Mount, gpt2_file_with_heads};

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    // Where the output goes.
    vec![
        Case::new(
            "output-is-the-input",
            Kind::OutputInsideInput,
            &["coalesce", "in", "--heads", "2", "-o", "in", "--force"],
            &["output in", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
        Case::new(
            "output-inside-the-input",
            Kind::OutputInsideInput,
            &["coalesce", "in", "--heads", "2", "-o", "in/small"],
            &["output in/small", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
        Case::new(
            "output-file-is-the-input-file",
            Kind::OutputInsideInput,
            &[
                "coalesce",
                "in/model.safetensors",
                "--heads",
                "2",
                "-o",
                "in/../in/model.safetensors",
                "--force",
            ],
            &["is the input"],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads())),
        Case::new(
            "plan-json-over-the-input",
            Kind::OutputInsideInput,
            &[
                "coalesce",
                "in",
                "--heads",
                "2",
                "--dry-run",
                "--plan-json",
                "in/config.json",
            ],
            &["output in/config.json", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None),
        Case::new(
            "output-through-a-symlinked-directory",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "link/small"],
            &["output link/small", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("link", Entry::Symlink("in".into())),
        Case::new(
            "output-is-a-dangling-symlink-into-the-input",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "out", "--force"],
            &["output out", "inside the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("out", Entry::Symlink("in/new".into())),
        Case::new(
            "output-is-a-symlink-to-the-input",
            Kind::SymlinkIntoInput,
            &["coalesce", "in", "--heads", "2", "-o", "link", "--force"],
            &["output link", "is the input"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with("link", Entry::Symlink("in".into())),
        Case::new(
            "read-only-output-directory",
            Kind::ReadOnlyOutput,
            &["coalesce", "in", "--heads", "2", "-o", "ro/out"],
            &["output ro/out", "cannot be written"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .mounted(Mount::ReadOnly, "ro"),
        Case::new(
            "full-disk-directory-output",
            Kind::FullDisk,
            &["coalesce", "in", "--heads", "2", "-o", "full/out"],
            &[
                "output full/out",
                "cannot be written",
                "No space left on device",
            ],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .mounted(Mount::Full(64 * 1024), "full"),
        Case::new(
            "full-disk-file-output-over-an-old-one",
            Kind::FullDisk,
            &[
                "decoalesce",
                "in/model.safetensors",
                "--heads",
                "8",
                "-o",
                "full/out.safetensors",
                "--force",
            ],
            &[
                "output full/out.safetensors",
                "cannot be written",
                "No space left on device",
            ],
        )
        .with_fixture("gpt2-tiny", "in", Some(gpt2_file_with_heads()))
        .mounted(Mount::Full(64 * 1024), "full")
        .with(
            "full/out.safetensors",
            Entry::File(b"the previous output".to_vec()),
        ),
    ]
}
