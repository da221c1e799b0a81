//! Corpus cases that attack the command line: α out of range or not finite, and scheme text
//! that does not parse or does not make groups.

use super::{Case, Kind};

/// The cases of this file, in order.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();

    // α.
    let alpha = |name, value: &str, extra: &[&str], needles: &[&str]| {
        let alpha_arg = format!("--alpha={value}");
        let mut args: Vec<&str> = vec!["interpolate", "in", "other", alpha_arg.as_str()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", "out"]);
        Case::new(name, Kind::Alpha, &args, needles)
            .with_fixture("gpt2-tiny", "in", None)
            .with_fixture("gpt2-tiny", "other", None)
    };
    cases.push(alpha(
        "alpha-above-one",
        "1.5",
        &[],
        &["alpha = 1.5", "[0, 1]", "--allow-extrapolation"],
    ));
    cases.push(alpha(
        "alpha-below-zero",
        "-0.25",
        &[],
        &["alpha = -0.25", "[0, 1]"],
    ));
    cases.push(alpha(
        "alpha-nan-even-extrapolating",
        "NaN",
        &["--allow-extrapolation"],
        &["alpha = NaN", "finite"],
    ));
    cases.push(alpha(
        "alpha-infinite-even-extrapolating",
        "inf",
        &["--allow-extrapolation"],
        &["alpha = inf", "finite"],
    ));
    cases.push(
        Case::new(
            "grow-alpha-above-one",
            Kind::Alpha,
            &[
                "grow", "small", "--large", "in", "--alpha", "2", "-o", "out",
            ],
            &["alpha = 2", "[0, 1]"],
        )
        .with_fixture("gpt2-tiny", "in", None)
        .with_fixture("gpt2-tiny", "small", None),
    );

    // Scheme text.
    let scheme = |name, option: &'static str, value: &'static str, needles: &[&str]| {
        Case::new(
            name,
            Kind::SchemeJson,
            &[
                "coalesce", "in", "--heads", "2", "--layers", "2", option, value, "-o", "out",
            ],
            needles,
        )
        .with_fixture("gpt2-tiny", "in", None)
    };
    cases.push(scheme(
        "scheme-json-cut",
        "--width-scheme",
        "[[0,1],[2,3",
        &["--width-scheme", "[[0,1],[2,3", "EOF"],
    ));
    cases.push(scheme(
        "scheme-json-object",
        "--depth-scheme",
        "{\"groups\": [[0,1]]}",
        &[
            "--depth-scheme",
            "is not `strided`, `adjacent`, `similar` or JSON groups",
        ],
    ));
    cases.push(scheme(
        "scheme-json-negative-unit",
        "--width-scheme",
        "[[0,-1],[2,3]]",
        &["--width-scheme", "invalid value: integer `-1`"],
    ));
    cases.push(scheme(
        "scheme-json-repeated-unit",
        "--width-scheme",
        "[[0,1],[1,3]]",
        &[
            "width scheme (head groups)",
            "unit 1 appears more than once",
        ],
    ));
    cases
}
