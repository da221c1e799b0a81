//! A wrong rule file is refused before the first step: a direction mistake (the FFN's down
//! projection marked `ffn:out` instead of `ffn:in`, which coalesces to half the right values and
//! would otherwise train to the end) by the function proof; and a resume with other rules of
//! the same name is refused. (Every other run of the suite passes the proof with its correct
//! rules: GPT-2, BERT, Llama, ViT and the custom model's rule file.)

use std::path::Path;
use std::sync::LazyLock;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::{InferenceStep, SequenceOutput, TrainStep};
use vcycle_plugin::data::LmBatch;
use vcycle_plugin::{
    ArchChoice, Error, FlopCounter, Gpt2, HfModel, Rules, Sizes, VCycle, VCycleConfig, VCycleModel,
    sequence_flop_counter,
};
use vcycle_transform::rules::{Axis, Direction, Space};

use crate::support::*;

/// GPT-2 under the `gpt2` preset with its FFN down projection's `ffn` axis marked `out`.
#[derive(Module, Debug)]
struct Mistaken {
    inner: Gpt2,
}

impl Mistaken {
    fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
        self.inner.forward_lm(batch)
    }
}

vcycle_plugin::sequence_steps!(Mistaken, LmBatch, forward_lm);

impl HfModel for Mistaken {
    fn arch() -> vcycle_plugin::Result<ArchChoice> {
        let mut rules = Rules::preset("gpt2")?;
        let rule = rules
            .tensors
            .iter_mut()
            .find(|r| r.template.ends_with("mlp.c_proj.weight"))
            .expect("the preset's FFN down projection");
        for axis in &mut rule.axes {
            if let Axis::Model { parts, dir } = axis
                && parts == &[Space::Ffn]
            {
                *dir = Direction::Out;
            }
        }
        Ok(ArchChoice::Rules(Box::new(rules)))
    }

    fn renames() -> &'static [(&'static str, &'static str)] {
        // The wrapped model's paths start with `inner.`.
        static RENAMES: LazyLock<Vec<(&str, &str)>> = LazyLock::new(|| {
            let mut renames = vec![(r"^inner\.", "")];
            renames.extend_from_slice(Gpt2::renames());
            renames
        });
        &RENAMES
    }

    fn sizes(&self) -> Sizes {
        self.inner.sizes()
    }

    fn from_sizes(sizes: &Sizes, device: &Device) -> vcycle_plugin::Result<Self> {
        Ok(Mistaken {
            inner: Gpt2::from_sizes(sizes, device)?,
        })
    }
}

impl VCycleModel for Mistaken {
    fn flop_counter(&self) -> vcycle_plugin::Result<FlopCounter<LmBatch>> {
        sequence_flop_counter(self)
    }
}

fn run<M>(model: M, run: &Path, config: VCycleConfig) -> vcycle_plugin::Result<()>
where
    M: VCycleModel
        + TrainStep<Input = LmBatch, Output = SequenceOutput>
        + InferenceStep<Input = LmBatch, Output = SequenceOutput>,
{
    let (train, valid) = loaders(24_000, 16, 4);
    VCycle::<M>::new(config, run, Device::flex().autodiff())?
        .run(
            model,
            train,
            valid,
            |segment: &vcycle_plugin::Segment, train, valid| {
                burn::train::SupervisedTraining::new(&segment.dir, train, valid)
                    .metric_train_numeric(burn::train::metric::LossMetric::new())
                    .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                    .with_application_logger(None)
            },
        )
        .map(|_| ())
}

/// Replaces every weight with a fixed pseudo-random value (1 ± 0.02 for vectors, 0 ± 0.02
/// otherwise), so that the test does not depend on the global random stream other tests share.
struct FixedWeights(u64);

impl ModuleMapper for FixedWeights {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| {
            let shape = tensor.shape();
            let base = if D == 1 { 1.0 } else { 0.0 };
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    base + 0.04 * ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                })
                .collect();
            Tensor::from_data(TensorData::new(values, shape), &tensor.device())
        })
    }
}

fn mistaken_model() -> Mistaken {
    let inner = tiny_gpt2().init(&Device::flex().autodiff()).expect("model");
    Mistaken { inner }
}

#[test]
fn a_wrong_direction_is_refused_before_the_first_step() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    // Fixed weights (not trainable as they are: the run stops before the first step).
    let model = Mistaken {
        inner: mistaken_model().inner.map(&mut FixedWeights(1)),
    };
    let error = run(model, &run_dir, two_levels(Some(2), Some(1), 3))
        .expect_err("a wrong direction is refused");
    let Error::RulesProof {
        level,
        small,
        grown,
        ..
    } = &error
    else {
        panic!("not the proof's error: {error}");
    };
    assert_eq!(*level, 2);
    let relative = (grown - small).abs() / small.abs();
    eprintln!("wrong FFN direction: loss {small} grown back {grown} ({relative:.1e} relative)");
    assert!(
        relative > 1e-3,
        "the mistake moves the loss ten times beyond the tolerance: {small} → {grown}"
    );
    let message = error.to_string();
    assert!(message.contains("`in`/`out`"), "{message}");
    assert!(
        !run_dir.join("checkpoints/01-down-L1").exists() && !run_dir.join("01-down-L1").exists(),
        "nothing trained"
    );
    assert!(
        !run_dir.join("checkpoints/00-proof").exists(),
        "the proof's checkpoints are removed"
    );
}

#[test]
fn the_proof_can_be_turned_off_for_models_it_does_not_fit() {
    let dir = tempdir();
    let config = two_levels(Some(2), Some(1), 1).with_prove_rules(false);
    run(mistaken_model(), &dir.path().join("run"), config).expect("trains unproved");
}

#[test]
fn a_resume_with_other_rules_of_the_same_name_is_refused() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let config = two_levels(Some(2), Some(1), 1).with_prove_rules(false);
    let model = tiny_gpt2().init(&Device::flex().autodiff()).expect("model");
    run(model, &run_dir, config.clone()).expect("the run");
    let (train, valid) = loaders(24_000, 16, 4);
    let error = VCycle::<Mistaken>::new(config, &run_dir, Device::flex().autodiff())
        .expect("driver")
        .resume(
            train,
            valid,
            |segment: &vcycle_plugin::Segment, train, valid| {
                burn::train::SupervisedTraining::new(&segment.dir, train, valid)
                    .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                    .with_application_logger(None)
            },
        )
        .map(|_| ())
        .expect_err("other rules are refused");
    assert!(
        error.to_string().contains("rules of `gpt2` differ"),
        "{error}"
    );
}
