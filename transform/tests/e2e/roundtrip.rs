//! coalesce(decoalesce(θ)) = θ on the fixtures (docs/operator-contract.md §3, property 1), and the other
//! direction's names and shapes.

use crate::util::{
    FIXTURES, Sandbox, Tensors, assert_same_names_and_shapes, assert_tensors_eq,
    assert_within_ulps, fixture, fixtures_dir, load, read_json,
};

/// (layers, hidden, heads, ffn) from a config.json of either architecture.
fn config_sizes(dir: &std::path::Path) -> [u64; 4] {
    let config = read_json(&dir.join("config.json"));
    let get = |keys: [&str; 2]| {
        keys.iter()
            .find_map(|k| config.get(*k).and_then(serde_json::Value::as_u64))
            .unwrap_or_else(|| panic!("{} has none of {keys:?}", dir.display()))
    };
    [
        get(["n_layer", "num_hidden_layers"]),
        get(["n_embd", "hidden_size"]),
        get(["n_head", "num_attention_heads"]),
        get(["n_inner", "intermediate_size"]),
    ]
}

/// Width/depth arguments for one direction of a round trip.
struct Resize<'a> {
    up: &'a [&'a str],
    down: &'a [&'a str],
    /// (layers, hidden, heads, ffn) of the de-coalesced model.
    large: [u64; 4],
}

const WIDTH: Resize<'static> = Resize {
    up: &["--heads", "8"],
    down: &["--heads", "4"],
    large: [4, 128, 8, 512],
};
const DEPTH: Resize<'static> = Resize {
    up: &["--layers", "8"],
    down: &["--layers", "4"],
    large: [8, 64, 4, 256],
};
const BOTH: Resize<'static> = Resize {
    up: &["--heads", "8", "--layers", "8"],
    down: &["--heads", "4", "--layers", "4"],
    large: [8, 128, 8, 512],
};

/// A scheme by name, with its width and depth options for 8 large units in 4 groups (the
/// same scheme serves both directions). The explicit groups are neither strided nor
/// adjacent.
struct Scheme {
    name: &'static str,
    width: &'static [&'static str],
    depth: &'static [&'static str],
}

const SCHEMES: [Scheme; 3] = [
    Scheme {
        name: "strided",
        width: &["--width-scheme", "strided"],
        depth: &["--depth-scheme", "strided"],
    },
    Scheme {
        name: "adjacent",
        width: &["--width-scheme", "adjacent"],
        depth: &["--depth-scheme", "adjacent"],
    },
    Scheme {
        name: "explicit",
        width: &["--width-scheme", "[[0,5],[1,4],[2,7],[3,6]]"],
        depth: &["--depth-scheme", "[[0,7],[6,1],[2,5],[4,3]]"],
    },
];

impl Scheme {
    /// The options for a resize: only the dimensions that change get a scheme.
    fn options(&self, resize: &Resize<'_>) -> Vec<&'static str> {
        let mut options = Vec::new();
        if resize.up.contains(&"--heads") {
            options.extend_from_slice(self.width);
        }
        if resize.up.contains(&"--layers") {
            options.extend_from_slice(self.depth);
        }
        options
    }
}

/// De-coalesces a fixture, checks the large model's sizes, coalesces it back and returns
/// (large, back).
fn round_trip(
    sb: &Sandbox,
    name: &str,
    resize: &Resize<'_>,
    scheme: &[&str],
) -> (Tensors, Tensors) {
    let input = fixture(name);
    let mut up = vec!["decoalesce", &input, "-o", "large"];
    up.extend_from_slice(resize.up);
    up.extend_from_slice(scheme);
    sb.ok(&up);
    assert_eq!(
        config_sizes(&sb.path("large")),
        resize.large,
        "{name}: sizes of the de-coalesced model"
    );
    let mut down = vec!["coalesce", "large", "-o", "back"];
    down.extend_from_slice(resize.down);
    down.extend_from_slice(scheme);
    sb.ok(&down);
    let result = (load(&sb.path("large")), load(&sb.path("back")));
    for dir in ["large", "back"] {
        std::fs::remove_dir_all(sb.path(dir)).expect("an output directory can be removed");
    }
    result
}

/// Runs the round trip for every scheme on both fixtures; the de-coalesced models of
/// different schemes must differ (so a scheme option that were ignored would fail).
fn check_bit_exact(resize: &Resize<'_>) {
    for name in FIXTURES {
        let original = load(&fixtures_dir().join(name));
        let mut larges: Vec<(&str, Tensors)> = Vec::new();
        for scheme in &SCHEMES {
            let scheme_name = scheme.name;
            let sb = Sandbox::new();
            let (large, back) = round_trip(&sb, name, resize, &scheme.options(resize));
            assert_tensors_eq(
                &back,
                &original,
                &format!("{name}, {scheme_name}: coalesce(decoalesce(θ))"),
            );
            for (other_name, other) in &larges {
                assert_ne!(
                    &large, other,
                    "{name}: the {scheme_name} and {other_name} schemes gave the same large model"
                );
            }
            larges.push((scheme_name, large));
        }
    }
}

#[test]
fn width_round_trip_is_bit_exact() {
    check_bit_exact(&WIDTH);
}

#[test]
fn depth_round_trip_is_bit_exact() {
    check_bit_exact(&DEPTH);
}

#[test]
fn width_and_depth_round_trip_is_bit_exact() {
    check_bit_exact(&BOTH);
}

#[test]
fn groups_of_four_round_trip_within_one_ulp() {
    let resize = Resize {
        up: &["--heads", "16", "--layers", "16"],
        down: &["--heads", "4", "--layers", "4"],
        large: [16, 256, 16, 1024],
    };
    for name in FIXTURES {
        let sb = Sandbox::new();
        let (_, back) = round_trip(&sb, name, &resize, &[]);
        let original = load(&fixtures_dir().join(name));
        assert_within_ulps(&back, &original, 1, &format!("{name}, groups of 4"));
    }
}

#[test]
fn groups_of_three_round_trip_within_one_ulp() {
    // Splitting by 3 is inexact, so this is where the 1 ulp allowance matters.
    let resize = Resize {
        up: &["--heads", "12", "--layers", "12"],
        down: &["--heads", "4", "--layers", "4"],
        large: [12, 192, 12, 768],
    };
    for name in FIXTURES {
        let sb = Sandbox::new();
        let (_, back) = round_trip(&sb, name, &resize, &[]);
        let original = load(&fixtures_dir().join(name));
        assert_within_ulps(&back, &original, 1, &format!("{name}, groups of 3"));
    }
}

#[test]
fn coalesce_then_decoalesce_restores_names_shapes_and_config() {
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        sb.ok([
            "coalesce", &input, "--heads", "2", "--layers", "2", "-o", "small",
        ]);
        assert_eq!(config_sizes(&sb.path("small")), [2, 32, 2, 128], "{name}");
        sb.ok([
            "decoalesce",
            "small",
            "--heads",
            "4",
            "--layers",
            "4",
            "-o",
            "again",
        ]);
        let original = load(&fixtures_dir().join(name));
        let again = load(&sb.path("again"));
        assert_same_names_and_shapes(
            &again,
            &original,
            &format!("{name}: decoalesce(coalesce(θ))"),
        );
        assert_ne!(
            again, original,
            "{name}: averaging random layers and heads cannot be undone exactly"
        );
        assert_eq!(
            read_json(&sb.path("again/config.json")),
            read_json(&fixtures_dir().join(name).join("config.json")),
            "{name}: config.json after coming back to the original sizes"
        );
    }
}

#[test]
fn mismatched_schemes_do_not_round_trip() {
    // The comparison has teeth: coalescing with other groups than the de-coalescing used
    // mixes different heads and layers, so the original does not come back.
    for name in FIXTURES {
        let sb = Sandbox::new();
        let input = fixture(name);
        sb.ok([
            "decoalesce",
            input.as_str(),
            "--heads",
            "8",
            "--layers",
            "8",
            "--width-scheme",
            "adjacent",
            "-o",
            "large",
        ]);
        sb.ok([
            "coalesce", "large", "--heads", "4", "--layers", "4", "-o", "back",
        ]);
        let back = load(&sb.path("back"));
        let original = load(&fixtures_dir().join(name));
        assert_same_names_and_shapes(&back, &original, name);
        assert_ne!(back, original, "{name}: adjacent up, strided down");
    }
}
