//! What the benchmark trains: the scale (model, batch, budget) and the variants (baseline and
//! V-cycles), with the step budgets that give every variant the baseline's training FLOPs.

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use vcycle_plugin::data::BYTE_VOCAB;
use vcycle_plugin::{BertConfig, Decay, Gpt2Config};

/// What the model learns from the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Next-byte prediction with a GPT-2.
    #[default]
    Gpt,
    /// Masked-byte prediction with a BERT: 15% of the bytes chosen, as BERT does.
    Bert,
}

impl Task {
    /// The name in tables, plots and result folders.
    pub fn model_name(self) -> &'static str {
        match self {
            Task::Gpt => "GPT",
            Task::Bert => "BERT",
        }
    }
}

/// The model size and batch of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Size {
    /// 4 layers × 4 heads, width 128, batches of 16 × 64 bytes: runs on 2 CPU cores.
    #[default]
    Small,
    /// 8 layers × 8 heads, width 512, batches of 32 × 128 bytes: for an accelerator.
    Gpu,
}

/// Model, data and budget shared by every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    /// The model and its objective.
    #[serde(default)]
    pub task: Task,
    /// Optimizer steps of the baseline; the V-cycles get the same training FLOPs.
    pub baseline_steps: usize,
    /// Steps between validation passes.
    pub eval_every: usize,
    pub batch: usize,
    pub seq: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Bytes of the held-out split used for validation.
    pub valid_bytes: usize,
    /// Warm-up steps of every segment (and of the baseline).
    pub warmup: usize,
}

impl Scale {
    /// The full benchmark: sized to run its 9 headline runs (3 seeds) in under an hour on 2
    /// cores (flex backend, release); the sweep adds 7 runs per seed.
    pub fn full() -> Self {
        Scale {
            task: Task::Gpt,
            baseline_steps: 600,
            eval_every: 30,
            batch: 16,
            seq: 64,
            hidden: 128,
            layers: 4,
            heads: 4,
            ffn: 512,
            valid_bytes: 16 * 1024,
            warmup: 20,
        }
    }

    /// The accelerator's scale: 8 layers × 8 heads, width 512 (25M parameters with the byte
    /// embeddings), batches of 32 windows of 128 bytes, the same 600 baseline steps per unit
    /// of `--budget`.
    pub fn gpu() -> Self {
        Scale {
            batch: 32,
            seq: 128,
            hidden: 512,
            layers: 8,
            heads: 8,
            ffn: 2048,
            valid_bytes: 64 * 1024,
            ..Self::full()
        }
    }

    /// The scale of `size`.
    pub fn of(size: Size) -> Self {
        match size {
            Size::Small => Self::full(),
            Size::Gpu => Self::gpu(),
        }
    }

    /// A few minutes: the same model, a short budget.
    pub fn quick(self) -> Self {
        Scale {
            baseline_steps: 160,
            eval_every: 20,
            ..self
        }
    }

    /// `times` the budget: steps, validation interval and warm-up all scale, so every budget
    /// has the same number of validation passes and the same warm-up share.
    pub fn times(self, times: usize) -> Self {
        Scale {
            baseline_steps: self.baseline_steps * times,
            eval_every: self.eval_every * times,
            warmup: self.warmup * times,
            ..self
        }
    }

    /// The GPT of a level with `heads` heads and `layers` layers: width and FFN shrink with the
    /// heads (the transform merges each head's hidden and FFN block with it).
    pub fn model(&self, heads: usize, layers: usize) -> Gpt2Config {
        Gpt2Config::new(
            256,
            self.seq,
            self.hidden * heads / self.heads,
            layers,
            heads,
            self.ffn * heads / self.heads,
        )
    }

    /// The BERT of a level, sized as [`Scale::model`], with one more token: the mask.
    pub fn bert_model(&self, heads: usize, layers: usize) -> BertConfig {
        BertConfig::new(
            BYTE_VOCAB + 1,
            self.seq,
            self.hidden * heads / self.heads,
            layers,
            heads,
            self.ffn * heads / self.heads,
        )
    }

    /// Training tokens of the baseline per parameter of the full model.
    pub fn tokens_per_parameter(&self) -> Result<f64> {
        use burn::module::Module;
        let device = Device::flex();
        let params = match self.task {
            Task::Gpt => self
                .model(self.heads, self.layers)
                .init(&device)?
                .num_params(),
            Task::Bert => self
                .bert_model(self.heads, self.layers)
                .init(&device)?
                .num_params(),
        };
        Ok((self.baseline_steps * self.batch * self.seq) as f64 / params as f64)
    }

    /// Training FLOPs of one step of the task's model (the plugin's analytic count).
    pub fn step_flops(&self, heads: usize, layers: usize) -> Result<f64> {
        let device = Device::flex();
        Ok(match self.task {
            Task::Gpt => {
                let model = self.model(heads, layers).init(&device)?;
                vcycle_plugin::train_flops(&model, self.batch, self.seq)?
            }
            Task::Bert => {
                let model = self.bert_model(heads, layers).init(&device)?;
                vcycle_plugin::train_flops(&model, self.batch, self.seq)?
            }
        })
    }
}

/// The path of model sizes a multi-level variant trains along.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Shape {
    /// The V-cycle: down, bottom, up.
    #[default]
    VCycle,
    /// Start at level 2 (the fresh model coalesced), grow once to level 1 after `grow_after`
    /// of the steps.
    LateGrowth { grow_after: f64 },
}

/// What [`Variant::lr_times`] appends to a name, before the factor.
const LR_SUFFIX: &str = ", lr x";

/// A name without the rate factor [`Variant::lr_times`] appended: the recipe whatever its rate.
pub fn without_lr_factor(name: &str) -> &str {
    name.rsplit_once(LR_SUFFIX)
        .map_or(name, |(recipe, _)| recipe)
}

/// One way of training: the baseline (1 level), a V-cycle, or late growth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Shown in tables and plots.
    pub name: String,
    /// 1 = the baseline; k ≥ 2 = a k-level V-cycle (each level halves heads and layers).
    pub levels: usize,
    /// Peak learning rate of the full model (baseline and level 1).
    pub lr: f64,
    /// Peak learning rate of the smaller levels.
    pub small_lr: f64,
    /// Level 1's rate after growing back, as a multiple of `lr`.
    pub up_lr_factor: f64,
    /// Interpolation weight of the de-coalesced model when growing.
    pub alpha: f64,
    /// Share of the baseline's steps trained at each level on the way down.
    pub down_share: f64,
    /// Share of the FLOPs budget spent at the bottom level.
    pub bottom_share: f64,
    pub width_scheme: String,
    pub depth_scheme: String,
    /// Carry Adam's moments across boundaries instead of resetting them.
    pub carry_moments: bool,
    /// Zero the output projections of the layers growing adds (function-preserving growth).
    pub zero_depth_init: bool,
    /// The learning rate after the warm-up: the baseline's whole run, the V-cycle's last
    /// segment (the others stay at their peak), decaying to 10% of the peak at the end; with
    /// `wsd`, the shape of the run's final decay.
    pub decay: Decay,
    /// The path of sizes (multi-level variants).
    #[serde(default)]
    pub shape: Shape,
    /// Heads and layers of level 2, where they are not half the full model's.
    #[serde(default)]
    pub small: Option<(usize, usize)>,
    /// Warmup-stable-decay over the whole run (the decay `decay` over its last
    /// [`WSD_DECAY_FRACTION`]) instead of cosine to the end.
    #[serde(default)]
    pub wsd: bool,
}

/// The share of the steps a warmup-stable-decay schedule decays over.
pub const WSD_DECAY_FRACTION: f64 = 0.2;

impl Variant {
    pub fn baseline() -> Self {
        Variant {
            name: "baseline".into(),
            levels: 1,
            lr: 2e-3,
            small_lr: 3e-3,
            up_lr_factor: 1.0,
            alpha: 0.5,
            down_share: 0.1,
            bottom_share: 0.15,
            width_scheme: "strided".into(),
            depth_scheme: "strided".into(),
            carry_moments: false,
            zero_depth_init: false,
            decay: Decay::Constant,
            shape: Shape::VCycle,
            small: None,
            wsd: false,
        }
    }

    /// Late growth: level 2 of `small` (heads, layers) from the start, grown once after
    /// `grow_after` of the steps, under warmup-stable-decay.
    pub fn late_growth(name: &str, small: (usize, usize), grow_after: f64) -> Self {
        Variant {
            name: name.into(),
            levels: 2,
            shape: Shape::LateGrowth { grow_after },
            small: Some(small),
            ..Self::baseline().with_wsd()
        }
    }

    /// This variant under warmup-stable-decay with a 1 − √t cooldown.
    pub fn with_wsd(self) -> Self {
        Variant {
            wsd: true,
            decay: Decay::Sqrt,
            ..self
        }
    }

    /// A k-level V-cycle with the plugin's defaults.
    pub fn vcycle(levels: usize) -> Self {
        Variant {
            name: format!("{levels} levels"),
            levels,
            ..Self::baseline()
        }
    }

    /// Whether every knob of [`sweep_from`] has the default of [`Variant::vcycle`] (the
    /// learning rates and the schedule aside).
    pub fn has_default_knobs(&self) -> bool {
        let default = Variant::vcycle(self.levels);
        (
            self.up_lr_factor,
            self.alpha,
            self.down_share,
            self.bottom_share,
            &self.width_scheme,
            &self.depth_scheme,
            self.carry_moments,
            self.zero_depth_init,
        ) == (
            default.up_lr_factor,
            default.alpha,
            default.down_share,
            default.bottom_share,
            &default.width_scheme,
            &default.depth_scheme,
            default.carry_moments,
            default.zero_depth_init,
        )
    }

    /// This variant with its learning rates (full and small levels) multiplied by `factor`.
    pub fn lr_times(&self, factor: f64) -> Self {
        Variant {
            name: format!("{}{LR_SUFFIX}{factor}", self.name),
            lr: self.lr * factor,
            small_lr: self.small_lr * factor,
            ..self.clone()
        }
    }

    /// A file-name form of the name.
    pub fn slug(&self) -> String {
        let mut slug = String::new();
        for c in self.name.chars() {
            if c.is_ascii_alphanumeric() || c == '.' {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') {
                slug.push('-');
            }
        }
        slug.trim_matches('-').to_string()
    }

    /// Heads and layers of each level, the full model first.
    pub fn sizes(&self, scale: &Scale) -> Result<Vec<(usize, usize)>> {
        let mut sizes = vec![(scale.heads, scale.layers)];
        if let (Some(small), 2) = (self.small, self.levels) {
            sizes.push(small);
            return Ok(sizes);
        }
        for level in 2..=self.levels {
            let (h, l) = sizes[level - 2];
            if h < 2 || l < 2 || h % 2 != 0 || l % 2 != 0 {
                bail!(
                    "{}: level {level} cannot halve {h} heads and {l} layers",
                    self.name
                );
            }
            sizes.push((h / 2, l / 2));
        }
        Ok(sizes)
    }

    /// Steps (down at each level above the bottom, bottom, up at each level above the bottom)
    /// that spend `bottom_share` of the baseline's FLOPs at the bottom and the baseline's FLOPs
    /// in all.
    pub fn budget(&self, scale: &Scale) -> Result<Budget> {
        let sizes = self.sizes(scale)?;
        let flops = sizes
            .iter()
            .map(|&(h, l)| scale.step_flops(h, l))
            .collect::<Result<Vec<f64>>>()?;
        let total = scale.baseline_steps as f64 * flops[0];
        if self.levels == 1 {
            return Ok(Budget {
                down: 0,
                bottom: scale.baseline_steps,
                up: 0,
                flops: total,
            });
        }
        if let Shape::LateGrowth { grow_after } = self.shape {
            // Steps s in all, g·s of them small, with the baseline's FLOPs.
            let (small, full) = (flops[1], flops[0]);
            let all = total / (grow_after * small + (1.0 - grow_after) * full);
            let bottom = (grow_after * all).round() as usize;
            let up = ((1.0 - grow_after) * all).round() as usize;
            return Ok(Budget {
                down: 0,
                bottom,
                up,
                flops: bottom as f64 * small + up as f64 * full,
            });
        }
        let above: f64 = flops[..flops.len() - 1].iter().sum();
        let bottom_flops = flops[flops.len() - 1];
        let down = (self.down_share * scale.baseline_steps as f64).round() as usize;
        let bottom = (self.bottom_share * total / bottom_flops).round() as usize;
        let up = ((total - bottom as f64 * bottom_flops) / above).round() as isize - down as isize;
        if up < 1 || bottom < 1 {
            bail!(
                "{}: the budget leaves {up} steps after growing and {bottom} at the bottom",
                self.name
            );
        }
        let up = up as usize;
        Ok(Budget {
            down,
            bottom,
            up,
            flops: (down + up) as f64 * above + bottom as f64 * bottom_flops,
        })
    }
}

/// Optimizer steps of a variant's segments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub down: usize,
    pub bottom: usize,
    pub up: usize,
    /// Planned training FLOPs.
    pub flops: f64,
}

/// The headline runs: the baseline and V-cycles of 2 and 3 levels.
pub fn headline() -> Vec<Variant> {
    vec![Variant::baseline(), Variant::vcycle(2), Variant::vcycle(3)]
}

/// The tuned comparison: the baseline and V-cycles of `levels` levels, each with a warm-up and
/// a cosine decay to 10% (the V-cycle's in its last segment), and, as they were before the
/// schedule, the baseline and the 2-level cycle at a constant rate.
pub fn tuned(levels: &[usize]) -> (Vec<Variant>, Vec<Variant>) {
    let cosine = |mut v: Variant| {
        v.name = format!("{}, cosine", v.name);
        v.decay = Decay::Cosine;
        v
    };
    let constant = |mut v: Variant| {
        v.name = format!("{}, constant lr", v.name);
        v
    };
    (
        std::iter::once(Variant::baseline())
            .chain(levels.iter().map(|&k| Variant::vcycle(k)))
            .map(cosine)
            .collect(),
        vec![constant(Variant::baseline()), constant(Variant::vcycle(2))],
    )
}

/// Issue 29's study: the baselines (cosine and warmup-stable-decay) and the recipes, each at
/// its default rates (the learning-rate factors multiply them).
pub fn study(scale: &Scale) -> (Vec<Variant>, Vec<Variant>) {
    let cosine = |mut v: Variant| {
        v.name = format!("{}, cosine", v.name);
        v.decay = Decay::Cosine;
        v
    };
    let wsd = |mut v: Variant| {
        v.name = format!("{}, wsd", v.name);
        v.with_wsd()
    };
    let vcycle = || Variant {
        alpha: 0.25,
        ..Variant::vcycle(2)
    };
    let (heads, layers) = (scale.heads, scale.layers);
    let baselines = vec![cosine(Variant::baseline()), wsd(Variant::baseline())];
    let mut recipes = vec![cosine(vcycle()), wsd(vcycle())];
    for share in [0.5, 0.7, 0.8] {
        let name = format!("1 layer, grow at {:.0}%", share * 100.0);
        recipes.push(Variant::late_growth(&name, (heads, 1), share));
    }
    recipes.push(Variant::late_growth(
        "half size, grow at 70%",
        (heads / 2, layers / 2),
        0.7,
    ));
    recipes.push(Variant {
        zero_depth_init: true,
        ..Variant::late_growth("1 layer zero-init, grow at 70%", (heads, 1), 0.7)
    });
    (baselines, recipes)
}

/// The knobs that matter and the options beyond the paper, each changed alone from the
/// 2-level defaults.
pub fn sweep() -> Vec<Variant> {
    sweep_from(&Variant::vcycle(2))
}

/// The knobs of [`sweep`], each changed alone from `base` (a 2-level cycle), named after it.
pub fn sweep_from(base: &Variant) -> Vec<Variant> {
    let with = |name: &str, change: &dyn Fn(&mut Variant)| {
        let mut v = base.clone();
        v.name = format!("{}, {name}", base.name);
        change(&mut v);
        v
    };
    // In the order they run: first the knobs of the growth step, where the 16x cycle lost
    // what its small level had gained (α, the rate after growing), then the others.
    vec![
        with("alpha 0.75", &|v| v.alpha = 0.75),
        with("up lr x0.5", &|v| v.up_lr_factor = 0.5),
        with("up lr x2", &|v| v.up_lr_factor = 2.0),
        with("alpha 0.25", &|v| v.alpha = 0.25),
        with("alpha 0.1", &|v| v.alpha = 0.1),
        with("Adam moments carried", &|v| v.carry_moments = true),
        with("bottom 30%", &|v| v.bottom_share = 0.3),
        with("down 20%", &|v| v.down_share = 0.2),
        with("zero depth init", &|v| v.zero_depth_init = true),
        with("bottom 5%", &|v| v.bottom_share = 0.05),
        with("similar groups", &|v| {
            v.width_scheme = "similar".into();
            v.depth_scheme = "similar".into();
        }),
    ]
}

/// The knob a sweep variant changes: its name after the base's.
fn knob(variant: &Variant) -> &str {
    variant
        .name
        .rsplit_once(", ")
        .map_or(variant.name.as_str(), |(_, knob)| knob)
}

/// The variants of `sweep` whose knob is one of `only` (all of them if `only` is empty).
pub fn only_knobs(sweep: Vec<Variant>, only: &[String]) -> Result<Vec<Variant>> {
    let only: Vec<&str> = only.iter().map(|k| k.trim()).collect();
    if let Some(unknown) = only.iter().find(|k| !sweep.iter().any(|v| knob(v) == **k)) {
        let knobs: Vec<&str> = sweep.iter().map(knob).collect();
        bail!(
            "--sweep-only: no knob named {unknown:?}; the knobs: {}",
            knobs.join(", ")
        );
    }
    Ok(sweep
        .into_iter()
        .filter(|v| only.is_empty() || only.contains(&knob(v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_gets_the_baseline_flops() {
        for task in [Task::Gpt, Task::Bert] {
            let scale = Scale {
                task,
                ..Scale::full()
            };
            let target = scale.baseline_steps as f64 * scale.step_flops(4, 4).unwrap();
            for v in headline().into_iter().chain(sweep()) {
                let b = v.budget(&scale).unwrap();
                assert!((b.flops / target - 1.0).abs() < 0.01, "{}: {b:?}", v.name);
            }
        }
    }

    /// The accelerator's scale plans every tuned variant at 16× with the baseline's FLOPs, and
    /// its 3-level cycle's bottom model (2 heads, 2 layers) can be built.
    #[test]
    fn the_gpu_scale_plans_its_cycles() {
        let scale = Scale::gpu().times(16);
        let target = scale.baseline_steps as f64 * scale.step_flops(8, 8).unwrap();
        let (tuned, fixed) = tuned(&[2, 3]);
        for v in tuned.iter().chain(&fixed) {
            let b = v.budget(&scale).unwrap();
            assert!((b.flops / target - 1.0).abs() < 0.01, "{}: {b:?}", v.name);
        }
        assert_eq!(scale.model(2, 2).hidden, 128);
    }

    /// `--sweep-only` keeps the named knobs, in the sweep's order, and refuses an unknown one.
    #[test]
    fn only_the_named_knobs_are_swept() {
        let base = Variant::vcycle(2).lr_times(0.5);
        let named = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let kept = only_knobs(sweep_from(&base), &named(&["up lr x2", "alpha 0.25"])).unwrap();
        let knobs: Vec<&str> = kept.iter().map(knob).collect();
        assert_eq!(knobs, ["up lr x2", "alpha 0.25"]);
        assert_eq!(
            only_knobs(sweep_from(&base), &[]).unwrap().len(),
            sweep_from(&base).len()
        );
        let error = only_knobs(sweep_from(&base), &named(&["alpha 0.3"])).unwrap_err();
        assert!(error.to_string().contains("alpha 0.25"), "{error}");
    }

    /// Every variant of the study gets the baseline's FLOPs, at 4× and 16×, and late growth
    /// spends its share of the steps small.
    #[test]
    fn the_study_plans_every_recipe_with_the_baseline_flops() {
        for times in [4, 16] {
            let scale = Scale::full().times(times);
            let target = scale.baseline_steps as f64 * scale.step_flops(4, 4).unwrap();
            let (baselines, recipes) = study(&scale);
            for v in baselines.iter().chain(&recipes) {
                let b = v.budget(&scale).unwrap();
                assert!((b.flops / target - 1.0).abs() < 0.01, "{}: {b:?}", v.name);
                if let Shape::LateGrowth { grow_after } = v.shape {
                    let share = b.bottom as f64 / (b.bottom + b.up) as f64;
                    assert!((share - grow_after).abs() < 0.001, "{}: {b:?}", v.name);
                    assert!(b.bottom + b.up > scale.baseline_steps, "{}", v.name);
                }
            }
        }
    }

    /// The sweep changes one knob each; the compared variants change none.
    #[test]
    fn sweep_variants_are_told_from_the_compared_ones() {
        let (tuned, fixed) = tuned(&[2, 3]);
        assert!(tuned.iter().chain(&fixed).all(Variant::has_default_knobs));
        let swept = sweep_from(&tuned[1].lr_times(2.0));
        assert!(swept.iter().all(|v| !v.has_default_knobs()));
        assert!(swept.iter().all(|v| v.lr == tuned[1].lr * 2.0));
    }
}
