//! `--width-scheme similar` / `--depth-scheme similar` through the CLI: the plan prints the
//! chosen groups, grow recomputes them from the saved large model, and de-coalescing without
//! it is refused with exit code 2.

use crate::util::{Sandbox, assert_mentions, assert_nothing_written, fixture};

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {stdout}"))
}

#[test]
fn grow_prints_the_groups_coalesce_chose() {
    let sb = Sandbox::new();
    let vit = fixture("vit-tiny");
    let similar = ["--width-scheme", "similar", "--depth-scheme", "similar"];
    let mut down = vec!["coalesce", vit.as_str(), "--heads", "2", "--layers", "2"];
    down.extend(similar);
    let plan = sb.ok(down.iter().copied().chain(["--dry-run"]));
    sb.ok(down.iter().copied().chain(["-o", "small"]));
    let mut up = vec![
        "grow",
        "small",
        "--large",
        vit.as_str(),
        "--alpha",
        "0.5",
        "--dry-run",
    ];
    up.extend(similar);
    let grown = sb.ok(up);
    for prefix in [
        "head groups:",
        "layer groups:",
        "similar head groups:",
        "similar layer groups:",
    ] {
        assert_eq!(
            line(&plan.stdout, prefix),
            line(&grown.stdout, prefix),
            "{prefix}"
        );
    }
}

#[test]
fn similar_decoalesce_without_the_large_model_exits_2() {
    let sb = Sandbox::new();
    sb.ok([
        "coalesce",
        &fixture("gpt2-tiny"),
        "--heads",
        "2",
        "-o",
        "small",
    ]);
    let run = sb.run([
        "decoalesce",
        "small",
        "--heads",
        "4",
        "--width-scheme",
        "similar",
        "-o",
        "wide",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert_mentions(&run, &["`similar`", "vcycle grow", "head groups:"]);
    assert_nothing_written(&sb.path("wide"));
}
