//! Rule files: the presets parse and are detected by their own tensors, axes and roles are
//! checked, unknown keys are errors with a line, and name templates match layer indices only.

use super::*;

#[test]
fn every_preset_parses() {
    for (name, _) in PRESETS {
        let rules = Rules::preset(name);
        assert!(rules.is_ok(), "{name}: {rules:?}");
    }
}

#[test]
fn every_presets_detection_tensors_are_its_own_tensors() {
    for (name, _) in PRESETS {
        let rules = Rules::preset(name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!rules.detect_tensors.is_empty(), "{name}");
        let patterns = rules.patterns("");
        for t in &rules.detect_tensors {
            assert!(
                patterns.iter().any(|p| p.layer_of(t).is_some()),
                "{name}: detection tensor `{t}` is not declared"
            );
        }
    }
}

#[test]
fn axes_parse_fused_spaces_and_fixed_names() {
    assert_eq!(
        Axis::parse("attn+attn+attn:out"),
        Ok(Axis::Model {
            parts: vec![Space::Attn; 3],
            dir: Direction::Out
        })
    );
    assert_eq!(Axis::parse("vocab"), Ok(Axis::Fixed("vocab".into())));
    assert_eq!(Axis::parse("1"), Ok(Axis::Fixed("1".into())));
    assert!(Axis::parse("hidden").is_err());
    assert!(Axis::parse("hidden:sideways").is_err());
    assert!(Axis::parse("width:out").is_err());
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let text = "name = \"x\"\n[[tensors]]\nname = \"a\"\naxes = [\"hidden:out\"]\nshape = 3\n";
    let err = Rules::parse(text, "custom.toml")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("custom.toml"), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("shape"), "{err}");
}

#[test]
fn unknown_roles_are_errors() {
    let text = "name = \"x\"\n[[tensors]]\nname = \"a\"\naxes = [\"hidden:out\"]\nrole = \"attn.qq.weight\"\n";
    let err = Rules::parse(text, "r.toml")
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown role `attn.qq.weight`"), "{err}");
}

#[test]
fn templates_match_layer_indices_only() {
    let rule = TensorRule {
        template: "h.{layer}.mlp.c_fc.weight".into(),
        axes: vec![],
        role: None,
        optional: false,
        root: false,
        embedding: false,
        head_norm: false,
        tied_to: None,
        layered: true,
    };
    let pattern = rule.pattern("transformer.");
    let layer = |name| pattern.layer_of(name);
    assert_eq!(layer("transformer.h.11.mlp.c_fc.weight"), Some(Some(11)));
    assert_eq!(layer("transformer.h.0.mlp.c_fc.weight"), Some(Some(0)));
    for not_one in [
        "transformer.h.01.mlp.c_fc.weight",
        "transformer.h.00.mlp.c_fc.weight",
        "transformer.h..mlp.c_fc.weight",
        "transformer.h.1a.mlp.c_fc.weight",
        "transformer.h.+1.mlp.c_fc.weight",
        "transformer.h.99999999999999999999999.mlp.c_fc.weight",
        "h.1.mlp.c_fc.weight",
        "transformer.hx1.mlp.c_fc.weight",
        "transformer.h.1.mlp.c_fc.weight.extra",
        "xtransformer.h.1.mlp.c_fc.weight",
    ] {
        assert_eq!(layer(not_one), None, "{not_one}");
    }
    let fixed = TensorRule {
        template: "wte.weight".into(),
        layered: false,
        ..rule
    };
    let pattern = fixed.pattern("transformer.");
    assert_eq!(pattern.layer_of("transformer.wte.weight"), Some(None));
    assert_eq!(pattern.layer_of("transformer.wte.weight2"), None);
    let root = TensorRule {
        root: true,
        template: "lm_head.weight".into(),
        ..fixed
    };
    assert_eq!(
        root.pattern("transformer.").layer_of("lm_head.weight"),
        Some(None)
    );
}
