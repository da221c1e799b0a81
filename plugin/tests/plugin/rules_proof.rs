//! A wrong rule file is refused before the first step: shape mistakes (fused QKV described as
//! one part, a rule for a bias the model lacks, an embedding's axes in the wrong order, a wrong
//! axis space) when the fresh model is coalesced through the path's levels; a direction mistake
//! (the FFN's down projection marked `ffn:out` instead of `ffn:in`, which coalesces to half the
//! right values and would otherwise train to the end) by the function proof; and a resume with
//! other rules of the same name is refused. (Every other run of the suite passes the proof with
//! its correct rules: GPT-2, BERT, Llama, ViT and the custom model's rule file.)

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::{InferenceStep, SequenceOutput, TrainStep};
use vcycle_plugin::data::LmBatch;
use vcycle_plugin::{
    ArchChoice, Error, FlopCounter, Gpt2, Resizable, Rules, Sizes, VCycle, VCycleConfig,
    VCycleModel, sequence_flop_counter,
};

use crate::support::*;

const GPT2_RULES: &str = include_str!("../../../transform/rules/gpt2.toml");

/// The `gpt2` preset's text with `from` replaced by `to` (which must occur in it once).
fn mistaken_rules(from: &str, to: &str) -> Rules {
    assert_eq!(GPT2_RULES.matches(from).count(), 1, "{from}");
    Rules::parse(&GPT2_RULES.replace(from, to), "mistaken.toml").expect("the rules parse")
}

/// GPT-2 under a rule file of the caller's: the rules are the model's value, chosen at run time.
#[derive(Module, Debug)]
struct Mistaken {
    inner: Gpt2,
    #[module(skip)]
    rules: Rules,
}

impl Mistaken {
    fn forward_lm(&self, batch: LmBatch) -> SequenceOutput {
        self.inner.forward_lm(batch)
    }
}

vcycle_plugin::sequence_steps!(Mistaken, LmBatch, forward_lm);

impl Resizable for Mistaken {
    fn arch(&self) -> vcycle_plugin::Result<ArchChoice> {
        Ok(ArchChoice::Rules(Box::new(self.rules.clone())))
    }

    /// The wrapped model's paths start with `inner.`.
    fn renames() -> &'static [(&'static str, &'static str)] {
        &[
            (r"^inner\.", ""),
            (r"\.gamma$", ".weight"),
            (r"\.beta$", ".bias"),
        ]
    }

    fn sizes(&self) -> Sizes {
        self.inner.sizes()
    }

    fn resized(&self, sizes: &Sizes, device: &Device) -> vcycle_plugin::Result<Self> {
        Ok(Mistaken {
            inner: self.inner.resized(sizes, device)?,
            rules: self.rules.clone(),
        })
    }
}

impl VCycleModel for Mistaken {
    fn flop_counter(&self) -> vcycle_plugin::Result<FlopCounter<LmBatch>> {
        sequence_flop_counter(self)
    }
}

/// Runs `model` on `config`, and says whether any segment's training started.
fn run<M>(model: M, run: &Path, config: VCycleConfig) -> (vcycle_plugin::Result<()>, bool)
where
    M: VCycleModel
        + TrainStep<Input = LmBatch, Output = SequenceOutput>
        + InferenceStep<Input = LmBatch, Output = SequenceOutput>,
{
    let (train, valid) = loaders(24_000, 16, 4);
    let trained = Arc::new(AtomicBool::new(false));
    let started = trained.clone();
    let result = VCycle::<M>::new(config, run, Device::flex().autodiff())
        .and_then(|mut driver| {
            driver.run(
                model,
                train,
                valid,
                move |_, training: burn::train::SupervisedTraining<M>| {
                    started.store(true, Ordering::SeqCst);
                    training
                        .metric_train_numeric(burn::train::metric::LossMetric::new())
                        .renderer(Box::new(vcycle_plugin::ProgressLine::quiet()))
                        .with_application_logger(None)
                },
            )
        })
        .map(|_| ());
    (result, trained.load(Ordering::SeqCst))
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

fn mistaken_model(rules: Rules) -> Mistaken {
    let inner = tiny_gpt2().init(&Device::flex().autodiff()).expect("model");
    Mistaken { inner, rules }
}

/// The FFN down projection's `ffn` axis marked `out`.
fn wrong_direction() -> Rules {
    mistaken_rules(
        "axes = [\"ffn:in\", \"hidden:out\"]",
        "axes = [\"ffn:out\", \"hidden:out\"]",
    )
}

#[test]
fn shape_mistakes_are_refused_before_the_first_step() {
    let mistakes = [
        (
            "fused QKV described as one part",
            "axes = [\"hidden:in\", \"attn+attn+attn:out\"]",
            "axes = [\"hidden:in\", \"attn:out\"]",
            "c_attn.weight",
        ),
        (
            "a rule for a bias the model lacks",
            "[[tensors]]\nname = \"ln_f.weight\"",
            "[[tensors]]\nname = \"h.{layer}.mlp.gate.bias\"\naxes = [\"ffn:out\"]\n\n[[tensors]]\nname = \"ln_f.weight\"",
            "mlp.gate.bias",
        ),
        (
            "the token embedding's axes in the wrong order",
            "axes = [\"vocab\", \"hidden:out\"]\nrole = \"embed.tokens\"",
            "axes = [\"hidden:out\", \"vocab\"]\nrole = \"embed.tokens\"",
            "wte.weight",
        ),
        (
            "the FFN's width in the attention's space",
            "axes = [\"hidden:in\", \"ffn:out\"]",
            "axes = [\"hidden:in\", \"attn:out\"]",
            "c_fc.weight",
        ),
    ];
    for (mistake, from, to, tensor) in mistakes {
        let dir = tempdir();
        let run_dir = dir.path().join("run");
        let model = mistaken_model(mistaken_rules(from, to));
        let (result, trained) = run(model, &run_dir, two_levels(Some(2), Some(1), 3));
        let error = result.expect_err(mistake);
        eprintln!("{mistake}: {error}");
        assert!(!trained, "{mistake}: refused before any training");
        assert!(
            !matches!(error, Error::RulesProof { .. }),
            "{mistake}: refused by the shapes, not the proof: {error}"
        );
        assert!(error.to_string().contains(tensor), "{mistake}: {error}");
    }
}

#[test]
fn a_wrong_direction_is_refused_before_the_first_step() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    // Fixed weights (not trainable as they are: the run stops before the first step).
    let model = mistaken_model(wrong_direction()).map(&mut FixedWeights(1));
    let (result, trained) = run(model, &run_dir, two_levels(Some(2), Some(1), 3));
    let error = result.expect_err("a wrong direction is refused");
    assert!(!trained, "refused before any training");
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
        !run_dir.join("checkpoints/00-proof").exists(),
        "the proof's checkpoints are removed"
    );
}

#[test]
fn the_proof_can_be_turned_off_for_models_it_does_not_fit() {
    let dir = tempdir();
    let config = two_levels(Some(2), Some(1), 1).with_prove_rules(false);
    let (result, _) = run(
        mistaken_model(wrong_direction()),
        &dir.path().join("run"),
        config,
    );
    result.expect("trains unproved");
}

#[test]
fn a_resume_with_other_rules_of_the_same_name_is_refused() {
    let dir = tempdir();
    let run_dir = dir.path().join("run");
    let config = two_levels(Some(2), Some(1), 1).with_prove_rules(false);
    run(fresh_gpt2(), &run_dir, config.clone())
        .0
        .expect("the run");
    let (train, valid) = loaders(24_000, 16, 4);
    let error = VCycle::<Mistaken>::new(config, &run_dir, Device::flex().autodiff())
        .expect("driver")
        .resume(
            mistaken_model(wrong_direction()),
            train,
            valid,
            |_, training| {
                training
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
