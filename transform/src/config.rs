//! Rewriting `config.json` for the output sizes: every size field the rules name, nothing else.

use serde_json::Value;

use crate::anatomy::Dims;
use crate::rules::ConfigKeys;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
