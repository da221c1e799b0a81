//! What the rules refuse: a module tensor no rule names, and a rule file whose Linear weights
//! need transposing in part.

use vcycle_plugin::{ArchChoice, CheckpointLayout, Error, Resizable, Rules};

use crate::support::*;

/// GPT-2's module under the `gpt2` rules without its norm renames: the error names the tensor.
#[test]
fn a_tensor_no_rule_names_is_an_error_naming_it() {
    let model = tiny_gpt2().init(&device()).expect("model");
    let dir = tempdir();
    let layout = CheckpointLayout::new(&ArchChoice::Preset("gpt2".into())).expect("layout");
    let error = layout
        .write(&model, &model.sizes(), dir.path())
        .expect_err("gamma is not a GPT-2 name");
    let message = error.to_string();
    assert!(matches!(error, Error::Layout { .. }), "{message}");
    assert!(message.contains("gamma"), "{message}");
    assert!(message.contains("no rule names it"), "{message}");
}

/// burn-store's adapters transpose every Linear weight or none.
#[test]
fn mixed_linear_layouts_are_refused() {
    let rules = Rules::parse(
        r#"
name = "mixed"
[config]
heads = ["h"]
[[tensors]]
name = "a.weight"
axes = ["hidden:in", "ffn:out"]
[[tensors]]
name = "b.weight"
axes = ["hidden:out", "ffn:in"]
"#,
        "mixed.toml",
    )
    .expect("rules");
    let error = CheckpointLayout::new(&ArchChoice::Rules(Box::new(rules))).expect_err("mixed");
    assert!(error.to_string().contains("b.weight"), "{error}");
}
