//! Adam's moments across a boundary (`optimizer_state = carry`, docs/operator-contract.md §4's open question).
//!
//! After a segment the optimizer's state is taken from Burn (an in-memory checkpointer: Burn's
//! `launch` gives back only the model) and written as two HuggingFace directories shaped like
//! the model: `m` (the first moment) and `sqrt_v` (the square root of the second moment), with
//! the model's own names, layouts and `config.json`. The transform library maps them with the
//! weights' operators (coalesce going down; de-coalesce and interpolate with the saved large
//! model's moments going up), and the next segment's optimizer starts from the result.
//!
//! Why √v: Adam steps by m/√v. Every operator of the transform is linear with non-negative
//! weights (means, sums, even splits, copies, positive scalings, convex interpolation), so
//! mapping √v keeps it non-negative and keeps m/√v consistent: a merged entry whose sources
//! all had the same m/√v gets that same ratio, whatever the operator (a sum or a mean, the
//! exact rule's norm scaling). Mapping v itself would not: summing an `in` axis multiplies
//! m by |g| but √v only by √|g|. The next optimizer gets v = (mapped √v)².
//!
//! Scale: the operators are the weights', not the gradients'. A merged parameter's true
//! gradient is the sum of its group's gradients along duplicated (`out`) axes and their mean
//! along split (`in`) axes, the reverse of the weights' mean and sum, so the mapped moments of
//! a tensor with unequally grouped axes (biases, norms, embeddings, depth-merged layers) are
//! off by factors of |g| from what fresh gradients at the new size would build. The first
//! step is unaffected (m and √v carry the same factor); the later mixing with fresh
//! gradients is, until the averages forget the carried values.
//!
//! Step count: the bias correction continues: the next optimizer's step count is the last
//! one's (so it counts the cycle's optimizer steps), not 0, which would divide carried,
//! already warm averages by 1 − β^t as if they held one gradient.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::OptimizerRecord;
use burn::optim::lr_scheduler::LrSchedulerRecord;
use burn::store::ModuleRecord;
use burn::store::burn_pack::{self, Reader, Scalar, Writer};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};
use serde_json::json;
use vcycle_transform::{Job, Options};

use crate::checkpoint::files;
use crate::checkpoint::resizable::Resizable;
use crate::error::{Error, Result, io, json};

/// The first moment's directory inside a moments directory.
pub const FIRST_MOMENT: &str = "m";
/// The second moment's square root's directory inside a moments directory.
pub const SQRT_SECOND_MOMENT: &str = "sqrt_v";
/// The step count's file inside a moments directory.
pub const STEP_FILE: &str = "optimizer.json";

/// Adam's and AdamW's per-parameter state fields in an optimizer record
/// (`{param id}.{field}`).
const M_FIELD: &str = "momentum.moment_1";
const V_FIELD: &str = "momentum.moment_2";
const TIME_FIELD: &str = "momentum.time";
/// The per-parameter rank scalar of a `ModuleOptimizer` record.
const RANK_FIELD: &str = "__rank";

/// Adam moments of a model's parameters, by parameter id.
pub struct Moments {
    m: HashMap<ParamId, TensorData>,
    v: HashMap<ParamId, TensorData>,
    /// Adam's step count (the largest over the parameters).
    step: usize,
}

impl Moments {
    /// Reads the moments out of an Adam or AdamW optimizer record. `what` names the record in
    /// errors.
    pub fn from_record(record: OptimizerRecord, what: &str) -> Result<Self> {
        let fail = |message: String| Error::Optimizer {
            what: what.to_string(),
            message,
        };
        let bytes = record.into_bytes().map_err(|e| fail(e.to_string()))?;
        let reader = Reader::from_bytes(bytes).map_err(|e| fail(e.to_string()))?;
        let mut step = 0;
        for (name, value) in reader.scalars() {
            if name.ends_with(&format!(".{TIME_FIELD}")) {
                let time = usize::try_from(*value).map_err(|e| fail(format!("{name}: {e}")))?;
                step = step.max(time);
            }
        }
        let (mut m, mut v) = (HashMap::new(), HashMap::new());
        for tensor in reader.into_tensors().map_err(|e| fail(e.to_string()))? {
            let (name, dtype, shape, param_id, bytes) =
                tensor.into_parts().map_err(|e| fail(e.to_string()))?;
            let Some(id) = param_id else { continue };
            let data = TensorData::from_bytes(bytes, shape, dtype);
            let Some((_, field)) = name.split_once('.') else {
                continue;
            };
            match field {
                M_FIELD => m.insert(ParamId::from(id), data),
                V_FIELD => v.insert(ParamId::from(id), data),
                _ => None,
            };
        }
        if m.is_empty() || m.len() != v.len() {
            return Err(fail(format!(
                "optimizer_state = carry needs Adam or AdamW: the state holds {} first and {} \
                 second moments",
                m.len(),
                v.len()
            )));
        }
        Ok(Moments { m, v, step })
    }

    /// Adam's step count.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The first moment of parameter `id`.
    pub fn first(&self, id: ParamId) -> Option<&TensorData> {
        self.m.get(&id)
    }

    /// The second moment of parameter `id`.
    pub fn second(&self, id: ParamId) -> Option<&TensorData> {
        self.v.get(&id)
    }

    /// Writes the moments of `model`'s parameters into `dir`, atomically: `m/` and `sqrt_v/`
    /// as HF directories of the model's architecture and size, and the step count. A parameter
    /// without state (it had no gradient) gets zeros.
    pub fn save<M: Resizable>(&self, model: &M, dir: &Path) -> Result<()> {
        let mut first = WithValues::new(&self.m, false);
        let m_model = model.clone().map(&mut first);
        let mut second = WithValues::new(&self.v, true);
        let v_model = model.clone().map(&mut second);
        if let Some(message) = first.error.or(second.error) {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                message,
            });
        }
        if first.found == 0 {
            return Err(Error::Mismatch {
                path: dir.to_path_buf(),
                message: "the optimizer state holds none of the model's parameters".into(),
            });
        }
        let step = self.step;
        files::write_dir_atomically(dir, |tmp| {
            for (name, model) in [(FIRST_MOMENT, &m_model), (SQRT_SECOND_MOMENT, &v_model)] {
                let sub = tmp.join(name);
                std::fs::create_dir(&sub).map_err(io(&sub))?;
                model.write_files(&sub)?;
            }
            files::write_json(&tmp.join(STEP_FILE), &json!({ "step": step }))
        })
    }

    /// An optimizer record that starts `model`'s parameters from the moments saved in `dir`
    /// (v = the square of `sqrt_v`), for [`burn::optim::ModuleOptimizer::load_record`].
    pub fn load_record<M: Resizable>(
        dir: &Path,
        model: &M,
        device: &Device,
    ) -> Result<OptimizerRecord> {
        let step = read_step(dir)?;
        let m = values(&model.load_dir(&dir.join(FIRST_MOMENT), device)?);
        let v = values(
            &model
                .load_dir(&dir.join(SQRT_SECOND_MOMENT), device)?
                .map(&mut Squared),
        );
        let mut params = Params::default();
        model.visit(&mut params);
        let mismatch = |message: String| Error::Mismatch {
            path: dir.to_path_buf(),
            message,
        };
        if m.len() != params.0.len() || v.len() != params.0.len() {
            return Err(mismatch(format!(
                "{} and {} moment tensors for {} parameters",
                m.len(),
                v.len(),
                params.0.len()
            )));
        }
        // The moment models are the next model's type and size, so they visit their
        // parameters in the same order.
        let mut tensors = Vec::with_capacity(2 * params.0.len());
        let mut scalars = Vec::with_capacity(2 * params.0.len());
        for (((id, shape), m), v) in params.0.into_iter().zip(m).zip(v) {
            if m.shape().as_slice() != shape.as_slice() || v.shape() != m.shape() {
                return Err(mismatch(format!(
                    "moments of shape {:?} for a parameter of shape {shape:?}",
                    m.shape()
                )));
            }
            let key = id.val();
            for (field, data) in [(M_FIELD, m), (V_FIELD, v)] {
                let (bytes, shape, dtype) = data.into_parts();
                tensors.push(burn_pack::Tensor::new(
                    format!("{key}.{field}"),
                    dtype,
                    shape,
                    Some(key),
                    bytes,
                ));
            }
            scalars.push((format!("{key}.{TIME_FIELD}"), Scalar::from(step)));
            scalars.push((format!("{key}.{RANK_FIELD}"), Scalar::from(shape.len())));
        }
        let mut writer = Writer::new(tensors);
        for (key, value) in scalars {
            writer = writer.with_scalar(&key, value);
        }
        let what = dir.display().to_string();
        let fail = |message: String| Error::Optimizer {
            what: what.clone(),
            message,
        };
        let bytes = writer.into_bytes().map_err(|e| fail(e.to_string()))?;
        OptimizerRecord::from_bytes(bytes).map_err(|e| fail(e.to_string()))
    }
}

/// Maps the moments saved in `trained` to the next level, as the weights were: `m` and `sqrt_v`
/// through `job` (built by the caller for each input directory: coalesce, or grow with the saved
/// large moments), the step count unchanged. Writes `next` atomically.
pub(crate) fn map(
    trained: &Path,
    next: &Path,
    job: impl Fn(&str) -> Result<Job>,
    warn: impl Fn(&[String]),
) -> Result<()> {
    let step = read_step(trained)?;
    files::write_dir_atomically(next, |tmp| {
        for name in [FIRST_MOMENT, SQRT_SECOND_MOMENT] {
            let job = job(name)?;
            warn(job.warnings());
            job.write(&tmp.join(name), false)?;
            warn(&job.write_warnings());
        }
        files::write_json(&tmp.join(STEP_FILE), &json!({ "step": step }))
    })
}

/// The coalesce job of a moments directory's `name` part.
pub(crate) fn coalesce_job(trained: &Path, options: &Options) -> impl Fn(&str) -> Result<Job> {
    let (trained, options) = (trained.to_path_buf(), options.clone());
    move |name| Ok(Job::coalesce(&trained.join(name), &options)?)
}

/// The grow job of a moments directory's `name` part: de-coalesce `trained`'s and interpolate
/// with `large`'s (the moments saved with the large model before it was coalesced).
pub(crate) fn grow_job(
    trained: &Path,
    large: &Path,
    alpha: f64,
    options: &Options,
) -> impl Fn(&str) -> Result<Job> {
    let (trained, large, options): (PathBuf, PathBuf, Options) =
        (trained.to_path_buf(), large.to_path_buf(), options.clone());
    move |name| {
        Ok(Job::grow(
            &trained.join(name),
            &large.join(name),
            alpha,
            &options,
        )?)
    }
}

fn read_step(dir: &Path) -> Result<usize> {
    let path = dir.join(STEP_FILE);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(json(&path))?;
    value
        .get("step")
        .and_then(serde_json::Value::as_u64)
        .map(|s| s as usize)
        .ok_or_else(|| Error::Optimizer {
            what: path.display().to_string(),
            message: "needs a non-negative integer `step`".into(),
        })
}

/// Squares every float parameter (x·x, as exact as a product is).
struct Squared;

impl ModuleMapper for Squared {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.clone().mul(tensor), mapper)
    }
}

/// Replaces each float parameter by its value in `values` (the square root of it with
/// `sqrt`), zeros where it has none.
struct WithValues<'a> {
    values: &'a HashMap<ParamId, TensorData>,
    sqrt: bool,
    found: usize,
    error: Option<String>,
}

impl<'a> WithValues<'a> {
    fn new(values: &'a HashMap<ParamId, TensorData>, sqrt: bool) -> Self {
        WithValues {
            values,
            sqrt,
            found: 0,
            error: None,
        }
    }
}

impl ModuleMapper for WithValues<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let value = match self.values.get(&id) {
            Some(data) if data.shape().as_slice() == tensor.dims().as_slice() => {
                self.found += 1;
                let value = Tensor::<D>::from_data(data.clone(), &device);
                if self.sqrt { value.sqrt() } else { value }
            }
            Some(data) => {
                self.error.get_or_insert(format!(
                    "optimizer state of shape {:?} for a parameter of shape {:?}",
                    data.shape(),
                    tensor.dims()
                ));
                tensor.zeros_like()
            }
            None => tensor.zeros_like(),
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// The float parameters of a module in visiting order: id and shape.
#[derive(Default)]
struct Params(Vec<(ParamId, Vec<usize>)>);

impl ModuleVisitor for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, param.val().dims().to_vec()));
    }
}

/// The float parameter values of a module in visiting order.
fn values<M: Module>(module: &M) -> Vec<TensorData> {
    #[derive(Default)]
    struct Values(Vec<TensorData>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().into_data());
        }
    }
    let mut out = Values::default();
    module.visit(&mut out);
    out.0
}

/// Keeps the optimizer record Burn's training loop checkpoints after each epoch, in memory:
/// the last one is the optimizer's state at the end of the segment.
pub(crate) struct LastRecord<R>(Arc<Mutex<Option<R>>>);

// Not derived: the records are neither `Clone` nor needed to be `Default`.
impl<R> Clone for LastRecord<R> {
    fn clone(&self) -> Self {
        LastRecord(self.0.clone())
    }
}

impl<R> Default for LastRecord<R> {
    fn default() -> Self {
        LastRecord(Arc::new(Mutex::new(None)))
    }
}

impl<R> LastRecord<R> {
    /// The last record saved.
    pub(crate) fn take(&self) -> Option<R> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl<R: Checkpoint + Send> Checkpointer<R> for LastRecord<R> {
    fn save(&self, _epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let mut slot = self
            .0
            .lock()
            .map_err(|e| CheckpointerError::Unknown(e.to_string()))?;
        *slot = Some(record);
        Ok(())
    }

    fn delete(&self, _epoch: usize) -> Result<(), CheckpointerError> {
        // Only the last record is kept; older ones are already gone.
        Ok(())
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        Err(CheckpointerError::Unknown(format!(
            "the V-cycle keeps no checkpoint of epoch {epoch} to resume from"
        )))
    }
}

/// Discards what Burn checkpoints of the model and scheduler (the V-cycle saves the model
/// itself at the boundary).
#[derive(Clone, Copy, Default)]
pub(crate) struct Discard;

impl Checkpointer<ModuleRecord> for Discard {
    fn save(&self, _epoch: usize, _record: ModuleRecord) -> Result<(), CheckpointerError> {
        Ok(())
    }
    fn delete(&self, _epoch: usize) -> Result<(), CheckpointerError> {
        Ok(())
    }
    fn restore(&self, epoch: usize) -> Result<ModuleRecord, CheckpointerError> {
        Err(CheckpointerError::Unknown(format!(
            "the V-cycle keeps no model checkpoint of epoch {epoch}"
        )))
    }
}

impl Checkpointer<LrSchedulerRecord> for Discard {
    fn save(&self, _epoch: usize, _record: LrSchedulerRecord) -> Result<(), CheckpointerError> {
        Ok(())
    }
    fn delete(&self, _epoch: usize) -> Result<(), CheckpointerError> {
        Ok(())
    }
    fn restore(&self, epoch: usize) -> Result<LrSchedulerRecord, CheckpointerError> {
        Err(CheckpointerError::Unknown(format!(
            "the V-cycle keeps no scheduler checkpoint of epoch {epoch}"
        )))
    }
}
