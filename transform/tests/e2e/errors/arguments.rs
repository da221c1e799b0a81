//! Refused arguments: sizes that do not divide the model's, explicit groups that do not cover
//! every unit once, scheme text that does not parse, α outside [0, 1], an unknown architecture.

use super::refuses;
use crate::util::{Sandbox, fixture};

#[test]
fn heads_that_do_not_divide_are_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    refuses(
        &sb,
        &["coalesce", input, "--heads", "3", "-o", "out"],
        "out",
        &["head", "4", "3", "do not divide"],
    );
    refuses(
        &sb,
        &["decoalesce", input, "--heads", "6", "-o", "out"],
        "out",
        &["head", "6", "4", "do not divide"],
    );
    refuses(
        &sb,
        &["coalesce", input, "--layers", "3", "-o", "out"],
        "out",
        &["layer", "do not divide"],
    );
    refuses(
        &sb,
        &["coalesce", input, "--heads", "8", "-o", "out"],
        "out",
        &["head", "8"],
    );
}

#[test]
fn explicit_groups_must_cover_every_unit_once_and_in_range() {
    let sb = Sandbox::new();
    let input = fixture("bert-tiny");
    let input = input.as_str();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[2]]"],
            &["width scheme (head groups)", "unit 3 is in no group"],
        ),
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[1,2,3]]"],
            &[
                "width scheme (head groups)",
                "unit 1 appears more than once",
            ],
        ),
        (
            &["--heads", "2", "--width-scheme", "[[0,1],[2,7]]"],
            &["width scheme (head groups)", "unit 7", "out of range"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0,1],[2,9]]"],
            &["depth scheme (layer groups)", "unit 9", "out of range"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0],[1],[2,3]]"],
            &["depth scheme (layer groups)", "3 groups"],
        ),
        (
            &["--layers", "2", "--depth-scheme", "[[0,1,2],[]]"],
            &["depth scheme (layer groups)", "group 1 is empty"],
        ),
    ];
    for (options, needles) in cases {
        let mut args = vec!["coalesce", input, "-o", "out"];
        args.extend_from_slice(options);
        refuses(&sb, &args, "out", needles);
    }
    // De-coalescing validates the same way (groups of the large model's 8 units).
    refuses(
        &sb,
        &[
            "decoalesce",
            input,
            "--heads",
            "8",
            "--width-scheme",
            "[[0,1],[2,3],[4,5],[6]]",
            "-o",
            "out",
        ],
        "out",
        &["width scheme (head groups)", "unit 7 is in no group"],
    );
}

#[test]
fn scheme_text_that_does_not_parse_is_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--heads",
            "2",
            "--width-scheme",
            "diagonal",
            "-o",
            "out",
        ],
        "out",
        &["--width-scheme", "diagonal"],
    );
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--layers",
            "2",
            "--depth-scheme",
            "[[0,1],[2,3",
            "-o",
            "out",
        ],
        "out",
        &["--depth-scheme", "[[0,1],[2,3"],
    );
    refuses(
        &sb,
        &[
            "coalesce",
            input,
            "--heads",
            "2",
            "--width-scheme",
            "[[0,-1],[2,3]]",
            "-o",
            "out",
        ],
        "out",
        &["--width-scheme"],
    );
}

#[test]
fn alpha_outside_zero_one_is_refused() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let input = input.as_str();
    sb.ok(["coalesce", input, "--heads", "2", "-o", "small"]);
    sb.ok(["decoalesce", "small", "--heads", "4", "-o", "other"]);
    for alpha in ["1.5", "-0.5", "NaN"] {
        let alpha_arg = format!("--alpha={alpha}");
        refuses(
            &sb,
            &["interpolate", input, "other", &alpha_arg, "-o", "out"],
            "out",
            &["alpha", alpha],
        );
        refuses(
            &sb,
            &["grow", "small", "--large", input, &alpha_arg, "-o", "out"],
            "out",
            &["alpha", alpha],
        );
    }
}

#[test]
fn an_unknown_architecture_is_named() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    refuses(
        &sb,
        &[
            "coalesce",
            input.as_str(),
            "--arch",
            "nosuch",
            "--heads",
            "2",
            "-o",
            "out",
        ],
        "out",
        &["nosuch", "bert", "gpt2"],
    );
    // The wrong built-in architecture: the message should say that the checkpoint is not a
    // `bert` one and name a tensor the rules cannot claim; it must not blame a missing
    // config.json when the input has one.
    refuses(
        &sb,
        &[
            "coalesce",
            input.as_str(),
            "--arch",
            "bert",
            "--heads",
            "2",
            "-o",
            "out",
        ],
        "out",
        &["bert", "transformer."],
    );
}
