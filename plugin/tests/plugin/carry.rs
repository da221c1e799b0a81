//! `optimizer_state = carry`: Adam's moments mapped across boundaries with the weights'
//! operators, loaded into the next segment's optimizer, saved with the checkpoints so a resumed
//! run carries them too.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use vcycle_plugin::data::BYTE_VOCAB;
use vcycle_plugin::moments::{FIRST_MOMENT, Moments, SQRT_SECOND_MOMENT, STEP_FILE};
use vcycle_plugin::{Bert, BertConfig, Gpt2, OptimizerStatePolicy, VCycle};
use vcycle_transform::{ArchChoice, Job, Options, Target};

use crate::support::*;

fn step_of(dir: &Path) -> u64 {
    let text = std::fs::read_to_string(dir.join(STEP_FILE)).expect("step file");
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    value["step"].as_u64().expect("step")
}

fn options(heads: usize, layers: usize) -> Options {
    Options {
        arch: ArchChoice::Preset("gpt2".into()),
        target: Target {
            heads: Some(heads),
            layers: Some(layers),
            ..Target::default()
        },
        shard_size: None,
    }
}

/// Float parameters in visiting order: id and values.
#[derive(Default)]
struct Values(Vec<(ParamId, TensorData)>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, param.val().into_data()));
    }
}

fn values<M: Module>(module: &M) -> Vec<(ParamId, TensorData)> {
    let mut v = Values::default();
    module.visit(&mut v);
    v.0
}

fn f32s(data: &TensorData) -> Vec<f32> {
    data.try_to_vec::<f32>().expect("f32")
}

#[test]
fn carry_maps_adam_moments_across_boundaries_and_resumes() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let device = Device::flex().autodiff();
    let config =
        || two_levels(Some(2), Some(1), 3).with_optimizer_state(OptimizerStatePolicy::Carry);
    let (train, valid) = loaders(24_000, 16, 4);
    let model = tiny_gpt2().init(&device).expect("model");
    let outcome = VCycle::new(config(), &run, device.clone())
        .expect("driver")
        .run(model, train, valid, quiet_training)
        .expect("V-cycle with carry");
    assert_eq!(outcome.boundaries.len(), 3);
    for r in &outcome.boundaries {
        println!(
            "carry: boundary {} {}: valid loss {:.4} -> {:?}",
            r.boundary, r.operator, r.valid_loss_before, r.valid_loss_after
        );
    }

    // Adam's step count runs on through the boundaries: segment 2 started from 3, not 0.
    let moments = run.join("moments");
    for (name, step) in [
        ("01-down-L1", 3),
        ("01-to-L2", 3),
        ("02-bottom-L2", 6),
        ("02-to-L1", 6),
    ] {
        assert_eq!(step_of(&moments.join(name)), step, "{name}");
    }
    assert!(!moments.join("03-up-L1").exists());

    // The mapped moments are the transform's output on the saved ones, bit for bit, and the
    // second moment's root stays non-negative.
    for part in [FIRST_MOMENT, SQRT_SECOND_MOMENT] {
        let coalesced = dir.path().join(format!("coalesced-{part}"));
        Job::coalesce(&moments.join("01-down-L1").join(part), &options(2, 1))
            .expect("coalesce job")
            .write(&coalesced, false)
            .expect("coalesce");
        assert_eq!(
            tensors(&coalesced.join("model.safetensors")),
            tensors(
                &moments
                    .join("01-to-L2")
                    .join(part)
                    .join("model.safetensors")
            ),
            "{part} coalesced"
        );
        let grown = dir.path().join(format!("grown-{part}"));
        Job::grow(
            &moments.join("02-bottom-L2").join(part),
            &moments.join("01-down-L1").join(part),
            0.5,
            &options(4, 2),
        )
        .expect("grow job")
        .write(&grown, false)
        .expect("grow");
        assert_eq!(
            tensors(&grown.join("model.safetensors")),
            tensors(
                &moments
                    .join("02-to-L1")
                    .join(part)
                    .join("model.safetensors")
            ),
            "{part} grown"
        );
    }
    for name in ["01-down-L1", "01-to-L2", "02-bottom-L2", "02-to-L1"] {
        let root = Gpt2::load(
            &moments.join(name).join(SQRT_SECOND_MOMENT),
            &Device::flex(),
        )
        .expect("sqrt_v");
        for (_, data) in values(&root) {
            assert!(f32s(&data).iter().all(|x| *x >= 0.0), "{name}: negative √v");
        }
    }

    // The optimizer of the segment after the first boundary holds the mapped moments
    // (v = √v²) and the step count, and its first step is Adam's with them.
    let next = Gpt2::load(&run.join("checkpoints/01-to-L2"), &device).expect("next model");
    let carried = moments.join("01-to-L2");
    let record = Moments::load_record(&carried, &next, &device).expect("carried record");
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(0.0)
        .init()
        .load_record(record);
    let loaded = Moments::from_record(optimizer.to_record(), "loaded").expect("loaded");
    assert_eq!(loaded.step(), 3);
    let m_model = Gpt2::load(&carried.join(FIRST_MOMENT), &Device::flex()).expect("m");
    let r_model = Gpt2::load(&carried.join(SQRT_SECOND_MOMENT), &Device::flex()).expect("√v");
    let params = values(&next);
    let (m_values, r_values) = (values(&m_model), values(&r_model));
    assert_eq!(params.len(), m_values.len());
    for (((id, _), (_, m)), (_, r)) in params.iter().zip(&m_values).zip(&r_values) {
        assert_eq!(loaded.first(*id).expect("m loaded"), m);
        let v: Vec<f32> = f32s(r).iter().map(|x| x * x).collect();
        assert_eq!(f32s(loaded.second(*id).expect("v loaded")), v);
    }

    let (train, _) = loaders(24_000, 16, 4);
    let batch = train.iter().next().expect("batch").expect("batch");
    let grads_of =
        |batch| GradientsParams::from_grads(next.forward_lm(batch).loss.backward(), &next);
    let grads = grads_of(batch.clone());
    let g_values: Vec<Vec<f32>> = params
        .iter()
        .map(|(id, theta)| grad_values(&grads, *id, theta))
        .collect();
    let lr = 1e-2;
    let stepped = values(&optimizer.step(lr, next.clone(), grads));
    let fresh = values(&AdamWConfig::new().with_weight_decay(0.0).init().step(
        lr,
        next.clone(),
        grads_of(batch),
    ));
    let (b1, b2, eps, t) = (0.9f32, 0.999f32, 1e-5f32, 4);
    let mut worst = 0.0f32;
    let mut differs_from_reset = false;
    for (i, (_, theta)) in params.iter().enumerate() {
        let g = &g_values[i];
        let m = f32s(&m_values[i].1);
        let r = f32s(&r_values[i].1);
        let theta = f32s(theta);
        let after = f32s(&stepped[i].1);
        for k in 0..theta.len() {
            let m1 = b1 * m[k] + (1.0 - b1) * g[k];
            let v1 = b2 * r[k] * r[k] + (1.0 - b2) * g[k] * g[k];
            let m_hat = m1 / (1.0 - b1.powi(t));
            let v_hat = v1 / (1.0 - b2.powi(t));
            let expected = theta[k] - lr as f32 * m_hat / (v_hat.sqrt() + eps);
            worst = worst.max((after[k] - expected).abs());
        }
        differs_from_reset |= f32s(&fresh[i].1) != after;
    }
    println!(
        "carry: first step after the boundary vs Adam with the mapped moments: max |Δθ| {worst:e}"
    );
    assert!(worst <= 1e-6, "{worst}");
    assert!(differs_from_reset);

    // A run stopped after its first boundary resumes with the carried moments.
    let state_path = run.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state")).expect("JSON");
    let first = state["boundaries"][0].clone();
    state["completed_segments"] = 1.into();
    state["steps"] = first["steps"].clone();
    state["train_flops"] = first["train_flops"].clone();
    state["boundaries"] = serde_json::Value::Array(vec![first]);
    std::fs::write(
        &state_path,
        serde_json::to_string_pretty(&state).expect("JSON"),
    )
    .expect("rewind state");
    // A write's work directory left by a killed process (pid 4000000 never runs on Linux).
    let killed_write = moments.join(".vcycle-4000000-carry.tmp");
    std::fs::create_dir_all(killed_write.join("new")).expect("plant");
    std::fs::write(killed_write.join(".vcycle-work"), "02-bottom-L2").expect("plant");
    let saved_first = tensors(&moments.join("01-to-L2/m/model.safetensors"));
    let (train, valid) = loaders(24_000, 16, 4);
    let resumed = VCycle::<Gpt2>::new(config(), &run, device)
        .expect("driver")
        .resume(fresh_gpt2(), train, valid, quiet_training)
        .expect("resume with carry");
    assert_eq!(resumed.boundaries.len(), 3);
    assert_eq!(step_of(&moments.join("02-bottom-L2")), 6);
    assert_eq!(
        tensors(&moments.join("01-to-L2/m/model.safetensors")),
        saved_first
    );
    assert!(!killed_write.exists());
}

/// The gradient of parameter `id` (shaped like `like`), as f32 values.
fn grad_values(grads: &GradientsParams, id: ParamId, like: &TensorData) -> Vec<f32> {
    let data = match like.shape().len() {
        1 => grads.get::<1>(id).map(|g| g.into_data()),
        2 => grads.get::<2>(id).map(|g| g.into_data()),
        rank => panic!("rank {rank}"),
    };
    f32s(&data.expect("gradient"))
}

/// The driver is not GPT-specific: carry on a tiny BERT, width and depth.
#[test]
fn carry_runs_a_tiny_bert_cycle() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let (train, valid) = mlm_loaders();
    let device = Device::flex().autodiff();
    let model = BertConfig::new(BYTE_VOCAB + 1, 32, 32, 2, 4, 64)
        .init(&device)
        .expect("model");
    let config = two_levels(Some(2), Some(1), 2).with_optimizer_state(OptimizerStatePolicy::Carry);
    let outcome = VCycle::new(config, &run, device.clone())
        .expect("driver")
        .run(model, train, valid, |_, training| {
            training
                .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                .with_application_logger(None)
        })
        .expect("BERT V-cycle with carry");
    assert_eq!(outcome.boundaries.len(), 3);
    for r in &outcome.boundaries {
        println!(
            "BERT carry: boundary {} {}: valid loss {:.4} -> {:?}",
            r.boundary, r.operator, r.valid_loss_before, r.valid_loss_after
        );
    }
    let moments = run.join("moments");
    assert_eq!(step_of(&moments.join("01-to-L2")), 2);
    assert_eq!(step_of(&moments.join("02-bottom-L2")), 4);
    let grown = Bert::load(&run.join("checkpoints/02-to-L1"), &device).expect("grown");
    let record =
        Moments::load_record(&moments.join("02-to-L1"), &grown, &device).expect("grown moments");
    let loaded = Moments::from_record(record, "grown").expect("moments");
    assert_eq!(loaded.step(), 4);
    for (id, _) in values(&grown) {
        assert!(
            f32s(loaded.second(id).expect("v"))
                .iter()
                .all(|v| *v >= 0.0)
        );
    }
}
