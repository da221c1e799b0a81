//! The fuzz targets without libFuzzer, on stable Rust: every committed seed, then random
//! mutations of the seeds (byte changes, insertions, deletions, splices, truncation).
//! `cargo fuzz run` explores far more; this keeps the targets and the corpus honest in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("header", vcycle_fuzz::header),
    ("config", vcycle_fuzz::config),
    ("rules", vcycle_fuzz::rules),
    ("scheme", vcycle_fuzz::scheme),
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

#[test]
fn the_committed_seeds_are_the_generated_ones() {
    for (target, name, bytes) in vcycle_fuzz::seeds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
            .join(&name);
        assert!(
            std::fs::read(&path).ok() == Some(bytes),
            "{} is stale: run `cargo run --example make_seeds` in fuzz/",
            path.display()
        );
    }
}

#[test]
fn every_seed_runs_clean() {
    for (target, run) in TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for seed in seeds {
            run(&seed);
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
    /// Copy a run of the input over another place (libFuzzer's CopyPart).
    Copy(prop::sample::Index, prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        4 => (index(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (index(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (index(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        2 => (index(), index(), 1usize..32).prop_map(|(a, b, n)| Edit::Copy(a, b, n)),
        1 => index().prop_map(Edit::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        let len = bytes.len();
        match edit {
            Edit::Set(i, b) => bytes[i.index(len)] = *b,
            Edit::Insert(i, b) => {
                let at = i.index(len);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Copy(from, to, n) => {
                let (from, to) = (from.index(len), to.index(len));
                let n = (*n).min(len - from).min(len - to);
                let part = bytes[from..from + n].to_vec();
                bytes[to..to + n].copy_from_slice(&part);
            }
            Edit::Truncate(i) => bytes.truncate(i.index(len)),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_seeds_run_clean(
        target in 0usize..TARGETS.len(),
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let (name, run) = TARGETS[target];
        let seeds = corpus(name);
        let input = apply(seeds[seed.index(seeds.len())].clone(), &edits);
        run(&input);
    }
}
