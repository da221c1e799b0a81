//! The Burn Llama against HuggingFace's logits (untied and tied heads) and the transform
//! library's forward pass, and V-cycles that coalesce its query heads, key/value heads and
//! layers and grow them back.

use burn::tensor::Device;
use ndarray::Array2;
use vcycle_plugin::{Llama, LlamaConfig, Resizable, VCycle, VCycleConfig};
use vcycle_transform::verify::{compare, random_tokens};

use crate::support::*;

fn llama_logits(model: &Llama, ids: &Array2<i64>, device: &Device) -> ndarray::ArrayD<f32> {
    logits_of(|input| model.forward(input), ids, device)
}

/// Checkpoints saved by HuggingFace `save_pretrained` (grouped-query attention, 4 query and 2
/// key/value heads; `lm_head` untied, then tied), imported into Burn, reproduce the logits
/// HuggingFace computed.
#[test]
fn imports_huggingface_checkpoints_and_matches_their_logits() {
    let device = device();
    for (name, tied) in [("llama", false), ("llama-tied", true)] {
        let dir = hf_reference_dir(name);
        let model = Llama::load(&dir, &device).expect("import HF llama");
        let config = model.config();
        assert_eq!(config.tied, tied, "{name}");
        assert_eq!((config.heads, config.kv_heads, config.head_dim), (4, 2, 16));
        let (ids, hf) = hf_reference_logits(&dir);
        let d = compare(&hf, &llama_logits(&model, &ids, &device)).expect("same shape");
        println!("HF {name} reference logits vs burn: {d:?}");
        assert!(d.max_abs <= 1e-5, "{name}: {d:?}");
    }
}

/// A randomly initialised Burn Llama, exported: the transform reads it as Llama with its
/// sizes, both forward passes agree, and importing it back and exporting again gives the same
/// bytes.
#[test]
fn export_matches_transform_forward_and_round_trips_exactly() {
    let device = device();
    let dir = tempdir();
    for tied in [false, true] {
        let out = dir.path().join(format!("llama-tied-{tied}"));
        let config = LlamaConfig::new(96, 48, 3, 4, 2, 12, 80)
            .with_positions(32)
            .with_tied(tied)
            .with_init_std(0.2);
        let model = config.init(&device).expect("model");
        model.save_dir(&out).expect("export");

        let ids = random_tokens(11, 3, 24, 96).expect("tokens");
        let logits = llama_logits(&model, &ids, &device);
        keep_for_hf_check(
            &format!("llama-export-tied-{tied}"),
            &out,
            "input_ids",
            ids_record(&ids),
            &logits,
        );
        let d = compare(&transform_logits(&out, &ids), &logits).expect("same shape");
        println!("burn llama (tied = {tied}) vs transform forward: {d:?}");
        assert!(d.max_abs <= 1e-4, "{d:?}");

        let (checkpoint, anatomy) =
            vcycle_transform::open_model(&out, &Default::default()).expect("open");
        assert_eq!(anatomy.rules.name, "llama");
        let dims = &anatomy.dims;
        assert_eq!(
            (dims.layers, dims.hidden, dims.heads, dims.kv_heads),
            (3, 48, 4, 2)
        );
        assert_eq!((dims.head_dim, dims.ffn, dims.tied), (12, 80, tied));
        assert_eq!(checkpoint.info("lm_head.weight").is_some(), !tied);
        assert_eq!(
            checkpoint
                .info("model.layers.0.self_attn.k_proj.weight")
                .map(|i| i.shape.clone()),
            Some(vec![24, 48]),
            "torch Linear layout [out, in], 2 key/value heads of 12"
        );

        let back = Llama::load(&out, &device).expect("import");
        assert_eq!(back.config(), model.config());
        let again = dir.path().join(format!("again-tied-{tied}"));
        back.save_dir(&again).expect("export again");
        assert_eq!(
            tensors(&out.join("model.safetensors")),
            tensors(&again.join("model.safetensors"))
        );
    }
}

/// A tiny Llama V-cycle: the full model's query and key/value heads coalesce 4 → 2 and 2 → 1
/// (`heads` alone keeps their ratio) and with `layers` its depth 2 → 1.
fn llama_cycle(config: VCycleConfig, run: &std::path::Path) -> vcycle_plugin::VCycleOutcome<Llama> {
    let device = Device::flex().autodiff();
    let (train, valid) = loaders(24_000, 16, 4);
    let model = LlamaConfig::new(256, 32, 2, 4, 2, 8, 64)
        .with_positions(32)
        .init(&device)
        .expect("model");
    VCycle::new(config, run, device)
        .expect("driver")
        .run(model, train, valid, |_, training| {
            training
                .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                .with_application_logger(None)
        })
        .expect("Llama V-cycle")
}

/// Growing with α = 0 gives back the saved full-size model bit for bit.
#[test]
fn llama_cycle_coalesces_heads_kv_heads_and_layers_and_alpha_zero_restores() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let outcome = llama_cycle(two_levels(Some(2), Some(1), 2).with_alpha(0.0), &run);
    assert_eq!(outcome.boundaries.len(), 3);
    let device = device();
    let bottom = Llama::load(&run.join("checkpoints/02-bottom-L2"), &device).expect("bottom");
    let small = bottom.config();
    assert_eq!(
        (small.heads, small.kv_heads, small.head_dim, small.layers),
        (2, 1, 8, 1)
    );
    let full = outcome.model.config();
    assert_eq!((full.heads, full.kv_heads, full.layers), (4, 2, 2));

    let saved = run.join("checkpoints/01-down-L1");
    let grown = run.join("checkpoints/02-to-L1");
    assert_eq!(
        tensors(&saved.join("model.safetensors")),
        tensors(&grown.join("model.safetensors"))
    );
    let ids = random_tokens(5, 2, 16, 256).expect("tokens");
    let a = llama_logits(&Llama::load(&saved, &device).expect("saved"), &ids, &device);
    let b = llama_logits(&Llama::load(&grown, &device).expect("grown"), &ids, &device);
    assert_eq!(a, b);
}

/// Growing the width with α = 1 gives a full-size Llama that computes the small one's
/// function: grouped-query attention, RMSNorm and SwiGLU survive de-coalescing.
#[test]
fn llama_cycle_grown_at_alpha_one_keeps_the_small_models_function() {
    let dir = tempdir();
    let run = dir.path().join("run");
    let outcome = llama_cycle(two_levels(Some(2), None, 2).with_alpha(1.0), &run);
    let device = device();
    let ids = random_tokens(3, 2, 16, 256).expect("tokens");
    keep_for_hf_check(
        "llama-vcycle-final",
        &outcome.final_dir,
        "input_ids",
        ids_record(&ids),
        &llama_logits(
            &Llama::load(&outcome.final_dir, &device).expect("final"),
            &ids,
            &device,
        ),
    );
    let small = run.join("checkpoints/02-bottom-L2");
    let grown = run.join("checkpoints/02-to-L1");
    let ids = random_tokens(9, 2, 16, 256).expect("tokens");
    let d = compare(
        &llama_logits(&Llama::load(&small, &device).expect("small"), &ids, &device),
        &llama_logits(&Llama::load(&grown, &device).expect("grown"), &ids, &device),
    )
    .expect("same shape");
    println!("Llama alpha = 1, burn forward, small vs grown: {d:?}");
    assert!(d.relative <= 1e-5, "{d:?}");
}
