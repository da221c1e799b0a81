//! Tiny V-cycles end to end, and the boundary invariants of docs/operator-contract.md §3 seen through the plugin.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::tensor::Device;
use vcycle_plugin::{
    Decay, DecaySegments, ExactBatches, Gpt2, Phase, Schedule, VCycle, VCycleConfig, train_flops,
};
use vcycle_transform::verify::{compare, random_tokens};

use crate::support::*;

fn run_cycle(config: VCycleConfig, run: &std::path::Path) -> vcycle_plugin::VCycleOutcome<Gpt2> {
    let device = Device::flex().autodiff();
    let (train, valid) = loaders(24_000, 16, 4);
    let model = tiny_gpt2().init(&device).expect("model");
    VCycle::new(config, run, device)
        .expect("driver")
        .run(model, train, valid, quiet_training)
        .expect("V-cycle")
}

#[test]
fn tiny_two_level_cycle_end_to_end() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let outcome = run_cycle(two_levels(Some(2), Some(1), 3), &run);

    let b = &outcome.boundaries;
    assert_eq!(b.len(), 3);
    assert_eq!(
        b.iter()
            .map(|r| (r.phase, r.operator.to_string()))
            .collect::<Vec<_>>(),
        vec![
            (Phase::Down, "coalesce".to_string()),
            (Phase::Bottom, "grow (alpha = 0.5)".to_string()),
            (Phase::Up, "end".to_string())
        ]
    );
    assert_eq!(b.iter().map(|r| r.steps).collect::<Vec<_>>(), vec![3, 6, 9]);
    let large = &b[0].from;
    let small = b[0].to.as_ref().expect("coalesced size");
    assert_eq!(
        (large.layers, large.heads, large.hidden, large.ffn),
        (2, 4, 32, 64)
    );
    assert_eq!(
        (small.layers, small.heads, small.hidden, small.ffn),
        (1, 2, 16, 32)
    );
    assert!(small.params < large.params);
    assert_eq!(b[1].to.as_ref(), Some(&b[2].from));
    assert!(b[0].train_flops > 0.0 && b[0].train_flops < b[1].train_flops);
    assert!(b[1].train_flops < b[2].train_flops);
    // At most full batches of 4 × 16 tokens (the last batch of a pass may be shorter).
    let per_step = train_flops(&tiny_gpt2().init(&device()).expect("model"), 4, 16).expect("flops");
    assert!(b[0].train_flops <= 3.0 * per_step + 1.0);
    for r in b {
        assert!(r.valid_loss_before.is_finite(), "{r:?}");
        assert!(r.valid_loss_after.is_none_or(f64::is_finite), "{r:?}");
    }

    // Every boundary left HF directories the transform reads; the log and state are on disk.
    for r in b {
        for rel in std::iter::once(&r.trained_checkpoint).chain(r.next_checkpoint.as_ref()) {
            let path = run.join(rel);
            assert!(path.join("config.json").is_file(), "{}", path.display());
            vcycle_transform::open_model(&path, &Default::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let log: Vec<vcycle_plugin::BoundaryRecord> =
        serde_json::from_str(&std::fs::read_to_string(run.join("boundaries.json")).expect("log"))
            .expect("log JSON");
    assert_eq!(&log, b);
    assert!(run.join("state.json").is_file());
    assert!(run.join("final/model.safetensors").is_file());
    let final_model = Gpt2::load(&run.join("final"), &device()).expect("final model");
    assert_eq!(final_model.config(), outcome.model.config());
    // The user's SupervisedTraining ran in the segment's artifact directory.
    assert!(run.join("segments/02-bottom-L2").is_dir());
    // The default optimizer-state policy (reset) keeps no moments.
    assert!(!run.join("moments").exists());
}

/// Growing with α = 0 gives back the large model saved before coalescing, exactly.
#[test]
fn grow_with_alpha_zero_restores_the_saved_large_model() {
    let dir = tempdir();
    let run = dir.path().join("run");
    run_cycle(two_levels(Some(2), Some(1), 2).with_alpha(0.0), &run);
    let saved = run.join("checkpoints/01-down-L1");
    let grown = run.join("checkpoints/02-to-L1");
    assert_eq!(
        tensors(&saved.join("model.safetensors")),
        tensors(&grown.join("model.safetensors"))
    );
    let device = device();
    let ids = random_tokens(5, 2, 16, 256).expect("tokens");
    let a = burn_logits(&Gpt2::load(&saved, &device).expect("saved"), &ids, &device);
    let b = burn_logits(&Gpt2::load(&grown, &device).expect("grown"), &ids, &device);
    assert_eq!(a, b);
}

/// Growing with α = 1 (width only) gives a large model computing the small model's function.
#[test]
fn grow_with_alpha_one_computes_the_small_models_function() {
    let dir = tempdir();
    let run = dir.path().join("run");
    run_cycle(two_levels(Some(2), None, 2).with_alpha(1.0), &run);
    let small = run.join("checkpoints/02-bottom-L2");
    let grown = run.join("checkpoints/02-to-L1");
    let ids = random_tokens(9, 2, 16, 256).expect("tokens");
    let by_transform = compare(
        &transform_logits(&small, &ids),
        &transform_logits(&grown, &ids),
    )
    .expect("same shape");
    println!("alpha = 1, transform forward, small vs grown: {by_transform:?}");
    assert!(by_transform.relative <= 1e-5, "{by_transform:?}");
    let device = device();
    let by_burn = compare(
        &burn_logits(&Gpt2::load(&small, &device).expect("small"), &ids, &device),
        &burn_logits(&Gpt2::load(&grown, &device).expect("grown"), &ids, &device),
    )
    .expect("same shape");
    println!("alpha = 1, burn forward, small vs grown: {by_burn:?}");
    assert!(by_burn.relative <= 1e-5, "{by_burn:?}");
}

#[derive(Clone)]
struct Ids;

impl Batcher<usize, usize> for Ids {
    fn batch(&self, items: Vec<usize>, _device: &Device) -> usize {
        items[0]
    }
}

#[test]
fn exact_batches_yields_the_budget_cycling_the_data() {
    let inner: Arc<dyn DataLoader<usize>> = DataLoaderBuilder::new(Ids)
        .batch_size(2)
        .build(InMemDataset::new((0..10).collect::<Vec<usize>>()));
    let total = Arc::new(std::sync::Mutex::new(0.0));
    let budget = ExactBatches::new(inner, 12)
        .with_counter(Arc::new(|_: &usize| 1.5), total.clone())
        .into_loader();
    let seen: Vec<usize> = budget.iter().map(|b| b.expect("batch")).collect();
    assert_eq!(seen, vec![0, 2, 4, 6, 8, 0, 2, 4, 6, 8, 0, 2]);
    assert_eq!(budget.num_items(), 12);
    assert_eq!(*total.lock().expect("lock"), 18.0);
    // Split in two halves for two devices: 6 batches each, from each half of the data.
    let halves: Vec<Vec<usize>> = [budget.slice(0, 6), budget.slice(6, 12)]
        .iter()
        .map(|l| l.iter().map(|b| b.expect("batch")).collect())
        .collect();
    assert_eq!(halves[0], vec![0, 2, 4, 0, 2, 4]);
    assert_eq!(halves[1], vec![5, 7, 9, 5, 7, 9]);
}

#[test]
fn refuses_bad_configurations() {
    let device = Device::flex();
    let one_level = VCycleConfig::new(vec![vcycle_plugin::LevelConfig::new(1e-3)], 1, 1, 1);
    assert!(VCycle::<Gpt2>::new(one_level, "unused", device.clone()).is_err());
    let alpha = two_levels(Some(2), None, 1).with_alpha(1.5);
    assert!(VCycle::<Gpt2>::new(alpha, "unused", device.clone()).is_err());
    // A scheme is typed: a configuration file naming an unknown one does not load.
    let level = serde_json::json!({
        "learning_rate": 1e-3, "up_learning_rate": null, "warmup_steps": 0, "heads": 2,
        "layers": null, "width_scheme": "zigzag", "depth_scheme": "strided"
    });
    let error = serde_json::from_value::<vcycle_plugin::LevelConfig>(level).expect_err("zigzag");
    assert!(error.to_string().contains("zigzag"), "{error}");
    let explicit = serde_json::json!({
        "learning_rate": 1e-3, "up_learning_rate": null, "warmup_steps": 0, "heads": 2,
        "layers": null, "width_scheme": "[[0,2],[1,3]]", "depth_scheme": {"explicit": [[0, 1]]}
    });
    let level: vcycle_plugin::LevelConfig = serde_json::from_value(explicit).expect("explicit");
    assert_eq!(
        level.width_scheme,
        vcycle_plugin::SchemeSpec::Explicit(vec![vec![0, 2], vec![1, 3]])
    );
    assert_eq!(
        level.depth_scheme,
        vcycle_plugin::SchemeSpec::Explicit(vec![vec![0, 1]])
    );
    let _ = device;
}

/// The driver is not GPT-specific: a tiny BERT MLM cycle, growing with α = 1 (width only)
/// keeps the small model's function.
#[test]
fn tiny_bert_cycle_preserves_function_at_alpha_one() {
    use vcycle_plugin::data::BYTE_VOCAB;
    use vcycle_plugin::{Bert, BertConfig};

    let dir = tempdir();
    let run = dir.path().join("run");
    let (train, valid) = mlm_loaders();
    let device = Device::flex().autodiff();
    let model = BertConfig::new(BYTE_VOCAB + 1, 32, 32, 2, 4, 64)
        .init(&device)
        .expect("model");
    let outcome = VCycle::new(two_levels(Some(2), None, 2).with_alpha(1.0), &run, device)
        .expect("driver")
        .run(model, train, valid, |_, training| {
            training
                .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                .with_application_logger(None)
        })
        .expect("BERT V-cycle");
    assert_eq!(outcome.boundaries.len(), 3);
    assert_eq!(outcome.model.config().heads, 4);
    let small = run.join("checkpoints/02-bottom-L2");
    let grown = run.join("checkpoints/02-to-L1");
    let ids = random_tokens(2, 2, 16, BYTE_VOCAB + 1).expect("tokens");
    let d = compare(
        &transform_logits(&small, &ids),
        &transform_logits(&grown, &ids),
    )
    .expect("same shape");
    println!("BERT alpha = 1, small vs grown: {d:?}");
    assert!(d.relative <= 1e-5, "{d:?}");
    Bert::load(&grown, &super::support::device()).expect("grown BERT loads");
}

/// The default schedules: a warm-up in every segment, only the last one decays, to 10% of its
/// peak at its last step; `DecaySegments::Every` decays them all.
#[test]
fn only_the_last_segment_decays_by_default_and_ends_at_the_floor() {
    let dir = tempdir();
    let mut config = two_levels(Some(2), Some(1), 20);
    for level in &mut config.levels {
        level.warmup_steps = 4;
    }
    let driver = VCycle::<Gpt2>::new(config.clone(), dir.path().join("run"), device()).unwrap();
    let schedules: Vec<Schedule> = driver.segments().iter().map(|s| s.schedule()).collect();
    assert_eq!(
        schedules.iter().map(|s| s.decay).collect::<Vec<_>>(),
        vec![Decay::Constant, Decay::Constant, Decay::Cosine]
    );
    for s in &schedules {
        assert_eq!((s.warmup, s.steps), (4, 20));
        assert_eq!(s.rate(4), s.peak);
    }
    let last = schedules[2];
    assert_eq!(last.peak, 3e-3);
    assert!((last.rate(20) - 3e-4).abs() < 1e-15, "{}", last.rate(20));
    assert_eq!(schedules[0].rate(20), 3e-3);
    assert_eq!(schedules[1].rate(20), 5e-3);

    let every = config.with_decay_segments(DecaySegments::Every);
    let driver = VCycle::<Gpt2>::new(every, dir.path().join("every"), device()).unwrap();
    for s in driver.segments() {
        let schedule = s.schedule();
        assert_eq!(schedule.decay, Decay::Cosine, "{}", s.name());
        assert!((schedule.rate(20) - 0.1 * schedule.peak).abs() < 1e-15);
    }
}

/// Gradient accumulation set in the segment closure must be told to the driver: a mismatch is
/// refused at the first boundary, and the matching `batches_per_step` trains the exact budget.
#[test]
fn batches_per_step_must_match_what_burn_runs() {
    let accumulating = |segment: &vcycle_plugin::Segment, training| {
        quiet_training(segment, training).grads_accumulation(2)
    };
    let run = |batches_per_step: usize, dir: &std::path::Path| {
        let mut config = two_levels(Some(2), Some(1), 3);
        config.batches_per_step = batches_per_step;
        let (train, valid) = loaders(24_000, 16, 4);
        VCycle::new(config, dir, Device::flex().autodiff())
            .expect("driver")
            .run(fresh_gpt2(), train, valid, accumulating)
    };
    let dir = tempdir();
    let error = run(1, &dir.path().join("unsaid")).expect_err("accumulation not told");
    let vcycle_plugin::Error::BatchesPerStep {
        segment,
        planned,
        taken,
        ..
    } = &error
    else {
        panic!("not the step count's error: {error}");
    };
    // 3 batches, accumulating 2: a step after the second and one at the end of the pass.
    assert_eq!((*segment, *planned, *taken), (1, 3, 2), "{error}");
    assert!(
        error.to_string().contains("gradient accumulation"),
        "{error}"
    );

    let outcome = run(2, &dir.path().join("told")).expect("accumulation told");
    assert_eq!(outcome.steps, 9);
}
