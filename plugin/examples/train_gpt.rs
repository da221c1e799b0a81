//! Trains a small byte-level GPT-2 on the Rust Book (data/rust-book.txt) with a 2-level
//! V-cycle: 4 layers × 4 heads (width 128) → coalesce to 2 layers × 2 heads (width 64) → grow
//! back with α = 0.5, writing a HuggingFace checkpoint at every boundary and the final model.
//!
//! ```sh
//! cargo run --release -p vcycle-plugin --example train_gpt            # a few minutes on 2 cores
//! cargo run --release -p vcycle-plugin --example train_gpt -- --resume  # after a kill
//! ```
//!
//! Everything V-cycle specific is marked `// V-cycle`; the rest is an ordinary Burn training.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::data::dataloader::DataLoaderBuilder;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::SupervisedTraining;
use burn::train::metric::LossMetric;
use clap::Parser;
use vcycle_plugin::data::{ByteWindows, LmBatcher, split_train_valid};
use vcycle_plugin::{
    Gpt2, Gpt2Config, LevelConfig, ProgressLine, Segment, VCycle, VCycleConfig, device,
};

#[derive(Parser)]
#[command(about = "Train a small GPT on the Rust Book with a 2-level V-cycle")]
struct Args {
    /// Run directory: boundary checkpoints, boundaries.json, state.json, final/.
    #[arg(long, default_value = "target/vcycle-gpt")]
    run_dir: PathBuf,
    /// Continue the run in --run-dir from its last completed boundary.
    #[arg(long)]
    resume: bool,
    /// Delete --run-dir first.
    #[arg(long, conflicts_with = "resume")]
    fresh: bool,
    /// cpu; wgpu, wgpu:N, wgpu:cpu (features wgpu, vulkan); tch-cpu, tch-cuda:N (feature
    /// tch); cuda:N (feature cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The corpus.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/rust-book.txt"))]
    corpus: PathBuf,
    /// Optimizer steps of the full model before coalescing.
    #[arg(long, default_value_t = 100)]
    down_steps: usize,
    /// Optimizer steps of the small model.
    #[arg(long, default_value_t = 600)]
    bottom_steps: usize,
    /// Optimizer steps of the full model after growing back.
    #[arg(long, default_value_t = 300)]
    up_steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Bytes per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Layers of the full model (the small one has half).
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads of the full model (the small one has half, so half the width).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Width of the full model (the FFN is 4× as wide).
    #[arg(long, default_value_t = 128)]
    hidden: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let device = device::parse(&args.device)?;
    if args.fresh && args.run_dir.exists() {
        std::fs::remove_dir_all(&args.run_dir)
            .with_context(|| format!("removing {}", args.run_dir.display()))?;
    }

    // Data: bytes of the Rust Book; 1 block of 2 KiB in 20 is validation (32 KiB of it used).
    let text = std::fs::read(&args.corpus)
        .with_context(|| format!("reading the corpus {}", args.corpus.display()))?;
    let (train, mut valid) = split_train_valid(&text, 20, 2048);
    valid.truncate(32 * 1024);
    println!(
        "corpus: {} bytes ({} train, {} validation)",
        text.len(),
        train.len(),
        valid.len()
    );
    let train_loader = DataLoaderBuilder::new(LmBatcher)
        .batch_size(args.batch)
        .shuffle(42)
        .set_device(device.clone())
        .build(ByteWindows::new(train, args.seq, args.seq / 2));
    let valid_loader = DataLoaderBuilder::new(LmBatcher)
        .batch_size(args.batch)
        .set_device(device.clone())
        .build(ByteWindows::new(valid, args.seq, args.seq));

    // The model and the training, as they would be without the V-cycle.
    let train_device = device.clone().autodiff();
    let model_config = Gpt2Config::new(
        256,
        args.seq,
        args.hidden,
        args.layers,
        args.heads,
        4 * args.hidden,
    );
    let training = |_: &Segment, training: SupervisedTraining<Gpt2>| {
        training
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .renderer(Box::new(ProgressLine::new()))
    };

    // V-cycle: two levels; the small one has half the heads (so half the width) and half the
    // layers, and a higher learning rate.
    let config = VCycleConfig::new(
        vec![
            LevelConfig::new(2e-3).with_warmup_steps(20),
            LevelConfig::new(3e-3)
                .with_heads(Some((args.heads / 2).max(1)))
                .with_layers(Some((args.layers / 2).max(1))),
        ],
        args.down_steps,
        args.bottom_steps,
        args.up_steps,
    )
    .with_boundary_valid_batches(Some(16));
    // What the run depends on beyond the V-cycle's configuration: a resume must use the same.
    let run_options = serde_json::json!({
        "corpus": args.corpus,
        "batch": args.batch,
        "seq": args.seq,
        "layers": args.layers,
        "heads": args.heads,
        "hidden": args.hidden,
    });
    let mut vcycle = VCycle::new(config, &args.run_dir, train_device.clone())?
        .with_run_options(run_options)
        .on_boundary(|record| println!("{record}"));
    if vcycle.has_run() && !args.resume {
        bail!(
            "{} already holds a run: pass --resume to continue it or --fresh to start over",
            args.run_dir.display()
        );
    }
    let started = std::time::Instant::now();
    let outcome = vcycle.run_or_resume(
        model_config.init(&train_device)?,
        train_loader,
        valid_loader,
        training,
    )?;

    println!(
        "\nV-cycle done in {:.0} s: {} optimizer steps, {:.3e} training FLOPs",
        started.elapsed().as_secs_f64(),
        outcome.steps,
        outcome.train_flops
    );
    println!(
        "boundary log: {}",
        args.run_dir.join("boundaries.json").display()
    );
    println!(
        "  {:<12} {:<18} {:>9} {:>10} {:>10}  valid loss",
        "segment", "operator", "train s", "tokens/s", "boundary s"
    );
    let mut previous_steps = 0;
    for b in &outcome.boundaries {
        let tokens = ((b.steps - previous_steps) * args.batch * args.seq) as f64;
        previous_steps = b.steps;
        println!(
            "  {:<12} {:<18} {:>9.1} {:>10.0} {:>10.2}  {:.4}{}",
            b.segment,
            b.operator,
            b.segment_seconds,
            tokens / b.segment_seconds,
            b.boundary_seconds,
            b.valid_loss_before,
            b.valid_loss_after
                .map(|a| format!(" -> {a:.4}"))
                .unwrap_or_default()
        );
    }
    println!(
        "final model (HuggingFace GPT2LMHeadModel): {}",
        outcome.final_dir.display()
    );
    let prompt = "Ownership is";
    println!(
        "sample: {prompt}{}",
        sample(&outcome.model, prompt, 160, args.seq, &device)
    );
    Ok(())
}

/// Greedy continuation of `prompt` by `len` bytes.
fn sample(model: &Gpt2, prompt: &str, len: usize, window: usize, device: &Device) -> String {
    use burn::module::Module;
    let model = model.valid();
    let mut bytes: Vec<i64> = prompt.bytes().map(i64::from).collect();
    for _ in 0..len {
        let start = bytes.len().saturating_sub(window);
        let context = &bytes[start..];
        let ids: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(context.to_vec(), [1, context.len()]),
            device,
        );
        let logits = model.forward(ids);
        let [_, seq, vocab] = logits.dims();
        let last = logits.narrow(1, seq - 1, 1).reshape([vocab]);
        // Int tensors may be i32 or i64 depending on the backend: convert while reading.
        let next = last
            .argmax(0)
            .into_data()
            .iter::<i64>()
            .next()
            .unwrap_or(32);
        bytes.push(next);
    }
    let out: Vec<u8> = bytes[prompt.len()..]
        .iter()
        .map(|&b| u8::try_from(b).unwrap_or(b'?'))
        .collect();
    String::from_utf8_lossy(&out).into_owned()
}
