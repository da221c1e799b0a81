//! Your own model in the V-cycle: a small decoder whose parameters carry its own names
//! (`tok`, `blocks.{i}.qkv`, `norm`, …), described by the rule file beside this example
//! (`custom_model.toml`), trained on the Rust Book through a 2-level V-cycle: 2 layers × 4
//! heads → coalesce to 1 layer × 2 heads → grow back.
//!
//! ```sh
//! cargo run -p vcycle-plugin --example custom_model   # writes target/vcycle-custom-model/
//! ```
//!
//! The model is ordinary Burn code; the glue the V-cycle needs is the block marked `V-cycle glue`.

use std::path::{Path, PathBuf};

use burn::data::dataloader::DataLoaderBuilder;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Int, Tensor, activation};
use burn::train::SequenceOutput;
use burn::train::metric::LossMetric;
use vcycle_plugin::data::{ByteWindows, LmBatch, LmBatcher, split_train_valid};
use vcycle_plugin::{
    ArchChoice, FlopCounter, LevelConfig, ProgressLine, Resizable, Rules, Sizes, VCycle,
    VCycleConfig, VCycleModel, VCycleOutcome, sequence_flop_counter,
};

/// A pre-LN decoder with learned positions and an output head tied to the token embedding.
#[derive(Module, Debug)]
pub struct TinyLm {
    tok: Embedding,
    pos: Embedding,
    blocks: Vec<Block>,
    norm: LayerNorm,
    #[module(skip)]
    sizes: Sizes,
}

/// Causal self-attention with fused q|k|v, then a GELU MLP, each behind a LayerNorm.
#[derive(Module, Debug)]
pub struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    out: Linear,
    norm2: LayerNorm,
    up: Linear,
    down: Linear,
    #[module(skip)]
    heads: usize,
}

impl TinyLm {
    /// A randomly initialised model of these sizes.
    pub fn new(sizes: &Sizes, device: &Device) -> vcycle_plugin::Result<Self> {
        let (d, a, f) = (sizes.dims.hidden, sizes.attn(), sizes.dims.ffn);
        let eps = sizes.norm_eps.unwrap_or(1e-5);
        let norm = || LayerNormConfig::new(d).with_epsilon(eps).init(device);
        let linear = |d_in, d_out| LinearConfig::new(d_in, d_out).init(device);
        let blocks = (0..sizes.dims.layers)
            .map(|_| Block {
                norm1: norm(),
                qkv: linear(d, 3 * a),
                out: linear(a, d),
                norm2: norm(),
                up: linear(d, f),
                down: linear(f, d),
                heads: sizes.dims.heads,
            })
            .collect();
        Ok(TinyLm {
            tok: EmbeddingConfig::new(sizes.fixed("vocab")?, d).init(device),
            pos: EmbeddingConfig::new(sizes.fixed("positions")?, d).init(device),
            blocks,
            norm: norm(),
            sizes: sizes.clone(),
        })
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = ids.dims();
        let positions = self.pos.weight.val().narrow(0, 0, seq).unsqueeze::<3>();
        let mut x = self.tok.forward(ids) + positions;
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [_, _, hidden] = x.dims();
        let embedding = self.tok.weight.val();
        let vocab = embedding.dims()[0];
        self.norm
            .forward(x)
            .reshape([batch * seq, hidden])
            .matmul(embedding.transpose())
            .reshape([batch, seq, vocab])
    }

    /// Logits and the mean next-token cross-entropy of a batch.
    pub fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
        vcycle_plugin::data::next_token_output(self.forward(batch.inputs), batch.targets)
    }
}

impl Block {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let qkv = self.qkv.forward(self.norm1.forward(x.clone()));
        let width = qkv.dims()[2] / 3;
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * width, width)
                .reshape([batch, seq, self.heads, width / self.heads])
                .swap_dims(1, 2)
        };
        let causal = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        let attended = attention(split(0), split(1), split(2), None, None, causal)
            .swap_dims(1, 2)
            .reshape([batch, seq, width]);
        let x = x + self.out.forward(attended);
        let hidden = activation::gelu_approximate(self.up.forward(self.norm2.forward(x.clone())));
        x + self.down.forward(hidden)
    }
}

// V-cycle glue: the steps, the architecture (the rule file), the sizes, a constructor.
vcycle_plugin::sequence_steps!(TinyLm, LmBatch, forward_lm);

impl Resizable for TinyLm {
    fn arch(&self) -> vcycle_plugin::Result<ArchChoice> {
        let rules = Rules::parse(include_str!("custom_model.toml"), "custom_model.toml")?;
        Ok(ArchChoice::Rules(Box::new(rules)))
    }

    fn sizes(&self) -> Sizes {
        self.sizes.clone()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> vcycle_plugin::Result<Self> {
        TinyLm::new(sizes, device)
    }
}

impl VCycleModel for TinyLm {
    fn flop_counter(&self) -> vcycle_plugin::Result<FlopCounter<LmBatch>> {
        sequence_flop_counter(self)
    }
}
// End of the glue.

/// Trains a fresh model through the V-cycle in `run_dir`, `steps` optimizer steps per segment.
fn train(run_dir: &Path, steps: usize, quiet: bool) -> anyhow::Result<VCycleOutcome<TinyLm>> {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/rust-book.txt");
    let text = std::fs::read(corpus)?;
    let (train, valid) = split_train_valid(&text[..text.len().min(200_000)], 20, 2048);
    let (seq, batch) = (32, 8);
    let train = DataLoaderBuilder::new(LmBatcher)
        .batch_size(batch)
        .shuffle(42)
        .set_device(Device::flex())
        .build(ByteWindows::new(train, seq, seq));
    let valid = DataLoaderBuilder::new(LmBatcher)
        .batch_size(batch)
        .set_device(Device::flex())
        .build(ByteWindows::new(valid, seq, seq));

    let device = Device::flex().autodiff();
    let sizes = Sizes::new(2, 64, 4, 128)
        .with_fixed("vocab", 256)
        .with_fixed("positions", seq);
    let config = VCycleConfig::new(
        vec![
            LevelConfig::new(3e-3),
            LevelConfig::new(5e-3)
                .with_heads(Some(2))
                .with_layers(Some(1)),
        ],
        steps,
        steps,
        steps,
    )
    .with_boundary_valid_batches(Some(8));
    let outcome = VCycle::new(config, run_dir, device.clone())?
        .on_boundary(move |record| {
            if !quiet {
                println!("{record}");
            }
        })
        .run(
            TinyLm::new(&sizes, &device)?,
            train,
            valid,
            move |_, training| {
                training
                    .metric_train_numeric(LossMetric::new())
                    .metric_valid_numeric(LossMetric::new())
                    .renderer(Box::new(if quiet {
                        ProgressLine::quiet()
                    } else {
                        ProgressLine::new()
                    }))
                    .with_application_logger(None)
            },
        )?;
    Ok(outcome)
}

fn main() -> anyhow::Result<()> {
    let run_dir = PathBuf::from("target/vcycle-custom-model");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let outcome = train(&run_dir, 60, false)?;
    println!(
        "\nfinal model ({} optimizer steps): {}",
        outcome.steps,
        outcome.final_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use vcycle_transform::verify::{compare, random_tokens};

    use super::*;

    /// The example's V-cycle, a few steps per segment: the checkpoints carry the model's own
    /// names, the bottom level is smaller, and the final model computes what the transform
    /// library's forward pass computes from the rule file.
    #[test]
    fn trains_through_a_v_cycle_with_its_own_names() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let outcome = train(&run, 3, true).unwrap();
        let b = &outcome.boundaries;
        assert_eq!(b.len(), 3);
        let bottom = b[0].to.as_ref().unwrap();
        assert_eq!((bottom.heads, bottom.layers, bottom.hidden), (2, 1, 32));
        let full = b[1].to.as_ref().unwrap();
        assert_eq!((full.heads, full.layers, full.hidden), (4, 2, 64));

        let checkpoint = vcycle_transform::Checkpoint::open(&outcome.final_dir).unwrap();
        let names: Vec<&str> = checkpoint.tensors().keys().map(String::as_str).collect();
        assert!(names.contains(&"blocks.1.qkv.weight"), "{names:?}");
        assert!(names.contains(&"norm.gamma"), "{names:?}");
        assert_eq!(
            checkpoint.info("blocks.0.qkv.weight").unwrap().shape,
            vec![64, 192],
            "Burn's [in, out] layout"
        );

        let device = Device::flex();
        let model = outcome.model.load_dir(&outcome.final_dir, &device).unwrap();
        assert_eq!(model.sizes().dims.heads, 4);
        let ids = random_tokens(5, 2, 16, 256).unwrap();
        let input = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().copied().collect::<Vec<i64>>(), [2, 16]),
            &device,
        );
        let logits = model.forward(input);
        let dims = logits.dims();
        let burn = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&dims),
            logits.into_data().try_to_vec::<f32>().unwrap(),
        )
        .unwrap();
        let arch = model.arch().unwrap();
        let (checkpoint, anatomy) =
            vcycle_transform::open_model(&outcome.final_dir, &arch).unwrap();
        let reference = vcycle_transform::verify::run_tokens(&checkpoint, &anatomy, &ids).unwrap();
        let d = compare(&reference, &burn).unwrap();
        assert!(d.max_abs <= 1e-4, "{d:?}");
    }
}
