//! The conversions the benchmark measures: coalesce to the small model's sizes, de-coalesce
//! back to twice them, grow with α = 0.5; as jobs, or as plans alone.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use vcycle_transform::plan;
use vcycle_transform::{AlphaRange, ArchChoice, Job, Options, Plan, Target, open_model};

/// The conversion `op` of the benchmark: coalesce to `small` sizes, decoalesce back to twice
/// the small model's, or grow with α = 0.5.
pub fn job(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Job> {
    let options = Options {
        target: target(op, inputs, small)?,
        ..Options::default()
    };
    Ok(match (op, inputs) {
        ("coalesce", [input]) => Job::coalesce(Path::new(input), &options)?,
        ("decoalesce", [input]) => Job::decoalesce(Path::new(input), &options)?,
        ("grow", [small, large]) => Job::grow(Path::new(small), Path::new(large), 0.5, &options)?,
        _ => bail!("bad conversion {op} {inputs:?}"),
    })
}

/// The sizes conversion `op` converts to: the small model's when coalescing, twice the small
/// model's when de-coalescing, the saved large model's (the default) when growing.
fn target(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Target> {
    let [heads, kv, layers] = small;
    Ok(match (op, inputs) {
        ("coalesce", _) => Target {
            heads: Some(heads.parse()?),
            kv_heads: Some(kv.parse()?),
            layers: Some(layers.parse()?),
            ..Target::default()
        },
        ("decoalesce", [input]) => decoalesce_target(input)?,
        _ => Target::default(),
    })
}

/// De-coalescing the small model back to the large one's sizes: twice the heads and layers of
/// the small model (the benchmark's models halve both).
fn decoalesce_target(input: &str) -> Result<Target> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(
        Path::new(input).join("config.json"),
    )?)?;
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| config.get(*k).and_then(Value::as_u64))
            .map(|n| n as usize)
    };
    let heads = get(&["num_attention_heads"]).context("no heads in config")?;
    let kv = get(&["num_key_value_heads"]).unwrap_or(heads);
    let layers = get(&["num_hidden_layers"]).context("no layers in config")?;
    Ok(Target {
        heads: Some(2 * heads),
        kv_heads: Some(2 * kv),
        layers: Some(2 * layers),
        ..Target::default()
    })
}

/// The conversion `op`'s plan alone: what [`job`] plans, without reading tensor data.
pub fn plan_only(op: &str, inputs: &[String], small: [&String; 3]) -> Result<Plan> {
    let target = target(op, inputs, small)?;
    let arch = ArchChoice::default();
    Ok(match (op, inputs) {
        ("coalesce", [input]) => {
            let (checkpoint, anatomy) = open_model(Path::new(input), &arch)?;
            plan::plan_resize(&checkpoint, &anatomy, &target, true)?
        }
        ("decoalesce", [input]) => {
            let (checkpoint, anatomy) = open_model(Path::new(input), &arch)?;
            plan::plan_resize(&checkpoint, &anatomy, &target, false)?
        }
        ("grow", [small, large]) => {
            let (small, small_anatomy) = open_model(Path::new(small), &arch)?;
            let (large, large_anatomy) = open_model(Path::new(large), &arch)?;
            plan::plan_grow(
                &small,
                &small_anatomy,
                &large,
                &large_anatomy,
                &target,
                0.5,
                AlphaRange::Interpolate,
            )?
        }
        _ => bail!("bad conversion {op} {inputs:?}"),
    })
}
