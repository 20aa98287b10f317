//! The tract backend of [`Net`](super::Net): an ONNX file as an optimized tract plan for batch 1,
//! run on one thread, with an operator profiler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use ndarray::{Array4, ArrayD, Ix4};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::checks::{check_input_dims, check_names};
use super::error::ModelError;
use super::net::OpTime;

/// One ONNX file as a runnable tract plan.
pub(super) struct TractNet(Arc<TypedRunnableModel>);

/// A [`ModelError::Tract`] naming `path`.
fn tract_error(path: &Path, e: &TractError) -> ModelError {
    ModelError::Tract { path: path.to_path_buf(), message: format!("{e:#}") }
}

impl TractNet {
    /// Load `path`, check its input and output names and its declared input dims, fix the batch
    /// to 1, optimize and plan.
    ///
    /// # Errors
    /// [`ModelError::Contract`] on a name/shape mismatch, [`ModelError::Tract`] if tract cannot
    /// load or optimize it.
    pub(super) fn load(path: &Path, inputs: &[(&str, Vec<usize>)], outputs: &[&str]) -> Result<Self, ModelError> {
        let tract_err = |e: TractError| tract_error(path, &e);
        let contract = |source| ModelError::Contract { path: path.to_path_buf(), source };
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(tract_err)?;
        let in_names: Vec<String> = model.input_outlets().map_err(tract_err)?.iter().map(|o| model.node(o.node).name.clone()).collect();
        let want: Vec<&str> = inputs.iter().map(|(n, _)| *n).collect();
        check_names("inputs", &in_names, &want).map_err(contract)?;
        for (ix, (name, shape)) in inputs.iter().enumerate() {
            let fact = model.input_fact(ix).map_err(tract_err)?;
            let declared: Vec<String> = fact.shape.dims().map(|d| d.concretize().map(|d| d.to_string()).unwrap_or("?".into())).collect();
            check_input_dims(name, &declared, shape).map_err(contract)?;
            model.set_input_fact(ix, f32::fact(shape).into()).map_err(tract_err)?;
        }
        let out_names: Vec<String> = model
            .output_outlets()
            .map_err(tract_err)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
            .collect();
        check_names("outputs", &out_names, outputs).map_err(contract)?;
        let plan = model.into_optimized().map_err(tract_err)?.into_runnable().map_err(tract_err)?;
        Ok(Self(plan))
    }

    /// Run on `inputs` and return the first `outputs` outputs as `[B, C, H, W]` arrays.
    ///
    /// # Errors
    /// [`ModelError::Tract`] naming `path` when tract fails or an output is not 4-D.
    pub(super) fn run(&self, path: &Path, inputs: Vec<Tensor>, outputs: usize) -> Result<Vec<Array4<f32>>, ModelError> {
        let err = |message: String| ModelError::Tract { path: path.to_path_buf(), message };
        let out = self.0.run(inputs.into_iter().map(|t| t.into_tvalue()).collect()).map_err(|e| tract_error(path, &e))?;
        out.into_iter()
            .take(outputs)
            .map(|v| {
                let a: ArrayD<f32> = v.into_tensor().into_plain_array::<f32>().map_err(|e| tract_error(path, &e))?;
                a.into_dimensionality::<Ix4>().map_err(|e| err(format!("output is not [B, C, H, W]: {e}")))
            })
            .collect()
    }

    /// Run `runs` times on `inputs`, timing every node; the time per operator kind, largest
    /// first (what tract's profiler shows, without its CLI).
    ///
    /// # Errors
    /// [`ModelError::Tract`] naming `path` when tract fails.
    pub(super) fn profile(&self, path: &Path, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<OpTime>, ModelError> {
        let mut state = tract_core::plan::SimpleState::new(&self.0).map_err(|e| tract_error(path, &e))?;
        let mut total: BTreeMap<String, f64> = BTreeMap::new();
        let mut nodes: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let runs = runs.max(1);
        for _ in 0..runs {
            let inputs = inputs.iter().map(|t| t.clone().into_tvalue()).collect();
            state
                .run_plan_with_eval(inputs, |ctx, op_state, node, input| {
                    let start = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, input);
                    let name = node.op().name().to_string();
                    *total.entry(name.clone()).or_default() += start.elapsed().as_secs_f64() * 1e3;
                    nodes.entry(name).or_default().insert(node.id);
                    out
                })
                .map_err(|e| tract_error(path, &e))?;
        }
        let mut times: Vec<OpTime> =
            total.into_iter().map(|(op, ms)| OpTime { nodes: nodes[&op].len(), op, ms: ms / runs as f64 }).collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}
