//! Choosing an architecture's rules: a preset by name, a user's rule file, or the preset that
//! config.json's `model_type` or the tensor names identify.

use serde_json::Value;

use super::{ArchChoice, META_ARCH};
use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::Rules;

pub(super) fn choose_rules(checkpoint: &Checkpoint, choice: &ArchChoice) -> Result<Rules> {
    match choice {
        ArchChoice::Preset(name) => Rules::preset(name),
        ArchChoice::Rules(rules) => Ok((**rules).clone()),
        ArchChoice::Detect => {
            let presets = Rules::presets()?;
            let model_type = checkpoint
                .config()
                .and_then(|c| c.get("model_type"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| checkpoint.metadata().get(META_ARCH).cloned());
            if let Some(model_type) = &model_type
                && let Some(rules) = presets.iter().find(|r| {
                    r.model_types.iter().any(|t| t == model_type) || &r.name == model_type
                })
            {
                return Ok(rules.clone());
            }
            let names = checkpoint.tensors();
            for rules in &presets {
                let found = !rules.detect_tensors.is_empty()
                    && rules.detect_tensors.iter().all(|t| {
                        rules
                            .prefixes
                            .iter()
                            .any(|p| names.contains_key(&format!("{p}{t}")))
                    });
                if found {
                    return Ok(rules.clone());
                }
            }
            let known: Vec<String> = presets.iter().map(|r| r.name.clone()).collect();
            Err(Error::UnknownArchitecture {
                path: checkpoint.path().to_path_buf(),
                reason: match model_type {
                    Some(t) => format!(
                        "model_type `{t}` is not a built-in architecture ({}) and no tensor names match one",
                        known.join(", ")
                    ),
                    None => format!(
                        "no config.json model_type and no tensor names of a built-in architecture ({})",
                        known.join(", ")
                    ),
                },
            })
        }
    }
}
