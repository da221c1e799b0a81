//! The gathers of a plan's axes, built once per conversion: the tensors of every layer share
//! their axes, and building a gather costs more than computing a small tensor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::plan::{AxisGather, Plan, TensorPlan};
use crate::rules::Axis;

/// A plan with the gathers its execution has built so far.
pub(super) struct Gathers<'p> {
    plan: &'p Plan,
    built: Mutex<HashMap<Axis, Arc<AxisGather>>>,
}

impl<'p> Gathers<'p> {
    pub(super) fn new(plan: &'p Plan) -> Self {
        Gathers {
            plan,
            built: Mutex::default(),
        }
    }

    /// The gather of each planned axis of `tensor`, in axis order; None where the axis is
    /// unchanged.
    pub(super) fn of(&self, tensor: &TensorPlan) -> Vec<Option<Arc<AxisGather>>> {
        tensor
            .axes
            .iter()
            .zip(&tensor.rule_axes)
            .map(|(axis_plan, rule_axis)| {
                axis_plan.op?;
                self.get(rule_axis)
            })
            .collect()
    }

    fn get(&self, axis: &Axis) -> Option<Arc<AxisGather>> {
        // A panic while the map was held left it whole (one insert or none), so a poisoned
        // lock's map is used as it is.
        let lock = || self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(built) = lock().get(axis) {
            return Some(built.clone());
        }
        let built = Arc::new(self.plan.axis_gather(axis)?);
        lock().insert(axis.clone(), built.clone());
        Some(built)
    }
}
