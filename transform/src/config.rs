//! `config.json` for other sizes: [`rewrite`] edits a checkpoint's own file (every size field
//! the rules name, nothing else), [`compose`] writes a model's whole file from its sizes.

use serde_json::{Map, Value};

use crate::anatomy::Dims;
/// A value of `config.json` under a possibly dotted key (`rope_parameters.rope_theta`).
pub use crate::anatomy::lookup;
use crate::rules::{ConfigKeys, Rules};

/// The input config with its size fields set to `to`. Keys keep their order; a size key whose
/// value is `null` (GPT-2's `n_inner`, meaning 4 × hidden) stays `null`, because both sizes
/// scale by the same factor.
pub fn rewrite(config: &Value, keys: &ConfigKeys, to: &Dims) -> Value {
    let mut out = config.clone();
    let fields: [(&[String], usize); 6] = [
        (&keys.hidden, to.hidden),
        (&keys.layers, to.layers),
        (&keys.heads, to.heads),
        (&keys.kv_heads, to.kv_heads),
        (&keys.ffn, to.ffn),
        (&keys.head_dim, to.head_dim),
    ];
    for (candidates, value) in fields {
        if let Some(key) = candidates.iter().find(|k| config.get(k.as_str()).is_some())
            && let Some(slot) = out.get_mut(key.as_str())
            && !slot.is_null()
        {
            *slot = Value::from(value);
        }
    }
    out
}

/// A model's `config.json`: `settings` (its entries that are not sizes, kept as they are) with
/// every size the rules name a key for set to `dims` (under the key `settings` already uses, or
/// else the rules' first; dotted keys write nested objects), the norm ε where given, whether the
/// head is tied, and the rules' `model_type` when `settings` has none. Unlike [`rewrite`], a
/// `null` size is replaced: the file states the model's own sizes.
pub fn compose(
    settings: &Map<String, Value>,
    rules: &Rules,
    dims: &Dims,
    norm_eps: Option<f64>,
) -> Value {
    let mut config = Value::Object(settings.clone());
    if let (Some(model_type), Some(map)) = (rules.model_types.first(), config.as_object_mut()) {
        map.entry("model_type")
            .or_insert_with(|| Value::from(model_type.as_str()));
    }
    let keys = &rules.config;
    let mut fields: Vec<(&[String], Value)> = vec![
        (&keys.hidden, dims.hidden.into()),
        (&keys.layers, dims.layers.into()),
        (&keys.heads, dims.heads.into()),
        (&keys.kv_heads, dims.kv_heads.into()),
        (&keys.head_dim, dims.head_dim.into()),
        (&keys.ffn, dims.ffn.into()),
    ];
    if let Some(eps) = norm_eps {
        fields.push((&keys.norm_eps, eps.into()));
    }
    for (candidates, value) in fields {
        let present = candidates.iter().find(|k| lookup(&config, k).is_some());
        if let Some(key) = present.or(candidates.first()) {
            set(&mut config, key, value);
        }
    }
    if let Some(key) = &keys.tie {
        set(&mut config, key, dims.tied.into());
    }
    config
}

/// Sets a possibly dotted key (`rope_parameters.rope_theta`), creating the objects on its way.
fn set(config: &mut Value, key: &str, value: Value) {
    let mut slot = config;
    for part in key.split('.') {
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(map) = slot else { return };
        slot = map.entry(part).or_insert(Value::Null);
    }
    *slot = value;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dims(layers: usize, hidden: usize, heads: usize, ffn: usize) -> Dims {
        Dims {
            layers,
            hidden,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads,
            ffn,
            tied: true,
            fixed: Default::default(),
        }
    }

    #[test]
    fn compose_names_every_size_with_the_rules_keys() {
        let rules = Rules::preset("gpt2").expect("preset");
        let settings = json!({"n_positions": 16, "n_inner": null});
        let Value::Object(settings) = settings else {
            unreachable!()
        };
        assert_eq!(
            compose(&settings, &rules, &dims(2, 32, 4, 64), Some(1e-5)),
            json!({
                "n_positions": 16, "n_inner": 64, "model_type": "gpt2", "n_embd": 32,
                "n_layer": 2, "n_head": 4, "layer_norm_epsilon": 1e-5,
                "tie_word_embeddings": true
            })
        );
    }

    #[test]
    fn compose_writes_dotted_keys_as_nested_objects() {
        let mut config = json!({"a": 1});
        set(&mut config, "rope.theta", json!(10.0));
        assert_eq!(config, json!({"a": 1, "rope": {"theta": 10.0}}));
    }

    #[test]
    fn only_size_fields_change_and_null_stays_null() {
        let keys = ConfigKeys {
            hidden: vec!["n_embd".into()],
            layers: vec!["n_layer".into()],
            heads: vec!["n_head".into()],
            ffn: vec!["n_inner".into()],
            ..ConfigKeys::default()
        };
        let config =
            json!({"n_embd": 64, "n_head": 4, "n_layer": 4, "n_inner": null, "vocab_size": 128});
        let to = Dims {
            layers: 2,
            hidden: 32,
            heads: 2,
            kv_heads: 2,
            head_dim: 16,
            ffn: 128,
            tied: true,
            fixed: Default::default(),
        };
        assert_eq!(
            rewrite(&config, &keys, &to),
            json!({"n_embd": 32, "n_head": 2, "n_layer": 2, "n_inner": null, "vocab_size": 128})
        );
    }
}
