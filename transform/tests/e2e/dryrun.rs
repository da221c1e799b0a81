//! `--dry-run` prints the plan and writes nothing; `--plan-json` writes the same plan.

use serde_json::Value;

use crate::util::{FIXTURES, Run, Sandbox, fixture, load, read_json};

/// The plan's tensor lines: the `tensors: N` header's count and the lines after it.
fn plan_lines(run: &Run) -> (usize, Vec<String>) {
    let mut lines = run.stdout.lines();
    let count = lines
        .by_ref()
        .find_map(|l| l.strip_prefix("tensors: "))
        .unwrap_or_else(|| panic!("no `tensors: N` line in the plan:\n{run}"))
        .parse()
        .expect("the tensor count is a number");
    (count, lines.map(str::to_string).collect())
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        let args = [
            "decoalesce",
            input.as_str(),
            "--heads",
            "8",
            "--layers",
            "8",
            "-o",
            "out",
        ];
        let mut dry = args.to_vec();
        dry.push("--dry-run");
        let run = sb.ok(&dry);
        assert!(
            sb.entries().is_empty(),
            "--dry-run wrote {:?}",
            sb.entries()
        );
        assert!(run.stdout.starts_with("operator: decoalesce\n"), "{run}");
        let (count, lines) = plan_lines(&run);
        assert_eq!(lines.len(), count, "one line per output tensor:\n{run}");

        // The plan describes what a real run writes, tensor by tensor.
        sb.ok(args);
        let written = load(&sb.path("out"));
        assert_eq!(count, written.len(), "{name}: planned vs written tensors");
        for line in &lines {
            let (tensor, rest) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("malformed plan line {line:?}"));
            let t = written
                .get(tensor)
                .unwrap_or_else(|| panic!("{name}: planned {tensor} was not written"));
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            let expected = format!("{:?}[{}] <- ", t.dtype, shape.join(", "));
            assert!(
                rest.starts_with(&expected),
                "{name}: plan line {line:?} does not start with {expected:?}"
            );
        }
    }
}

#[test]
fn dry_run_needs_no_output_and_ignores_an_existing_one() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    let run = sb.ok(["coalesce", input.as_str(), "--heads", "2", "--dry-run"]);
    assert!(run.stdout.contains("head groups: [[0,2],[1,3]]"), "{run}");
    assert!(sb.entries().is_empty());
    std::fs::write(sb.path("out"), "existing").expect("a file can be written");
    sb.ok([
        "coalesce",
        input.as_str(),
        "--heads",
        "2",
        "--dry-run",
        "-o",
        "out",
    ]);
    assert_eq!(
        std::fs::read_to_string(sb.path("out")).ok().as_deref(),
        Some("existing")
    );
    // Without --dry-run an output is required.
    let run = sb.run(["coalesce", input.as_str(), "--heads", "2"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--output"), "{run}");
}

#[test]
fn plan_json_has_one_entry_per_tensor_of_the_dry_run() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        let run = sb.ok([
            "coalesce",
            input.as_str(),
            "--heads",
            "2",
            "--layers",
            "2",
            "--dry-run",
            "--plan-json",
            "plan.json",
        ]);
        assert_eq!(sb.entries(), ["plan.json"], "only the plan is written");
        let (count, lines) = plan_lines(&run);
        let plan = read_json(&sb.path("plan.json"));
        let tensors = plan["tensors"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: plan.json has no tensors array: {plan}"));
        assert_eq!(tensors.len(), count, "{name}: JSON vs text plan");
        for (entry, line) in tensors.iter().zip(&lines) {
            let tensor = entry["name"].as_str().expect("each entry has a name");
            assert!(
                line.starts_with(&format!("{tensor} ")),
                "{name}: JSON entry {tensor} vs text line {line:?}"
            );
            assert!(entry["shape"].is_array(), "{name}: {tensor} has a shape");
            assert!(
                entry["sources"].as_array().is_some_and(|s| !s.is_empty()),
                "{name}: {tensor} has sources"
            );
        }
        assert_eq!(plan["operator"]["name"], Value::from("coalesce"));
        assert_eq!(plan["to"]["heads"], Value::from(2));
        assert_eq!(plan["to"]["layers"], Value::from(2));
    }
}

#[test]
fn plan_json_is_also_written_by_a_real_run() {
    let sb = Sandbox::new();
    let input = fixture("bert-tiny");
    sb.ok([
        "decoalesce",
        input.as_str(),
        "--layers",
        "8",
        "--plan-json",
        "plan.json",
        "-o",
        "out",
    ]);
    let plan = read_json(&sb.path("plan.json"));
    let planned = plan["tensors"].as_array().map_or(0, Vec::len);
    assert_eq!(planned, load(&sb.path("out")).len());
}

#[test]
fn plan_json_never_overwrites_an_input() {
    let sb = Sandbox::new();
    let dir = sb.copy_fixture("gpt2-tiny", "in");
    let before = std::fs::read(dir.join("model.safetensors")).expect("the copy can be read");
    for target in ["in/model.safetensors", "in/config.json"] {
        let run = sb.run([
            "coalesce",
            "in",
            "--heads",
            "2",
            "--dry-run",
            "--plan-json",
            target,
        ]);
        assert_eq!(run.code, 2, "--plan-json {target} must be refused:\n{run}");
        assert!(run.stderr.contains(target), "{run}");
        assert!(
            std::fs::read(dir.join("model.safetensors")).ok() == Some(before.clone()),
            "--plan-json {target} destroyed the input's model.safetensors"
        );
        assert!(
            read_json(&dir.join("config.json"))
                .get("model_type")
                .is_some(),
            "--plan-json {target} destroyed the input's config.json"
        );
    }
}

#[test]
fn a_refused_conversion_writes_no_plan_json() {
    let sb = Sandbox::new();
    let input = fixture("gpt2-tiny");
    std::fs::create_dir(sb.path("out")).expect("a directory can be created");
    let run = sb.run([
        "coalesce",
        input.as_str(),
        "--heads",
        "2",
        "--plan-json",
        "plan.json",
        "-o",
        "out",
    ]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(
        sb.entries(),
        ["out"],
        "a failed run leaves a plan of a conversion that did not happen"
    );
}
