//! The tract backend of [`Net`](super::Net): an ONNX file as an optimized tract plan for batch 1
//! (inputs fixed to the types and shapes the file declares, [`Feed`]), run on the calling thread
//! or on a rayon pool (`[runtime] threads`), by any number of callers at once, with an operator
//! profiler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::ArrayD;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_core::floats::FloatPrecisionTranslator;
use tract_core::transform::ModelTransform;
use tract_linalg::multithread::Executor;

use super::backend::{Backend, Precision};
use super::checks::check_names;
use super::error::ModelError;
use super::feed::{Declared, Feed, InputSpec, resolve_feeds};
use super::group_norm::fuse_group_norms;
use super::net::OpTime;

/// One ONNX file as a runnable tract plan, with the feed of each of its inputs (file order).
pub(super) struct TractNet {
    plan: Arc<TypedRunnableModel>,
    feeds: Vec<Feed>,
    threads: usize,
    precision: Precision,
    /// Run states not in use: one is taken per call and put back after it, so that concurrent
    /// callers each have their own and a caller reuses one instead of building it per call.
    states: Mutex<Vec<TypedSimpleState>>,
}

/// The executor of plans run with `threads` threads: the calling thread for 1 (tract's
/// `SingleThread`; its `multithread(1)` would be a one-thread pool), else a rayon pool of
/// `threads` threads named `mcm-tract-N`, built once per count and shared by every plan of the
/// process, so that nets and workers do not multiply the threads.
///
/// # Errors
/// [`ModelError::Backend`] when the pool's threads cannot be started.
pub(super) fn executor(threads: usize) -> Result<Executor, ModelError> {
    static POOLS: Mutex<BTreeMap<usize, Executor>> = Mutex::new(BTreeMap::new());
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = pools.get(&threads) {
        return Ok(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|n| format!("mcm-tract-{n}"))
        .build()
        .map_err(|e| ModelError::Backend(format!("tract: cannot start a pool of {threads} threads: {e}")))?;
    let pool = Executor::MultiThread(Arc::new(pool));
    pools.insert(threads, pool.clone());
    Ok(pool)
}

/// A [`ModelError::Tract`] naming `path`.
fn tract_error(path: &Path, e: &TractError) -> ModelError {
    ModelError::Tract { path: path.to_path_buf(), message: format!("{e:#}") }
}

/// The inputs of `model` as the file declares them (names, element types, dims).
fn declared_inputs(model: &InferenceModel) -> TractResult<Vec<Declared>> {
    let outlets = model.input_outlets()?.to_vec();
    outlets
        .iter()
        .enumerate()
        .map(|(ix, o)| {
            let fact = model.input_fact(ix)?;
            let dims = fact.shape.rank().concretize().map(|_| {
                fact.shape.dims().map(|d| d.concretize().map(|d| d.to_string()).unwrap_or("?".into())).collect()
            });
            Ok(Declared { name: model.node(o.node).name.clone(), datum_type: fact.datum_type.concretize(), dims })
        })
        .collect()
}

/// Floating-point operations of one run of `path` at batch 1 with `inputs`, as tract estimates
/// them: 2 per multiply-add (`Cost::FMA`) of the decluttered graph (convolutions, matrix products),
/// the rest (norms, activations) left out, as FLOP counts of neural nets usually are.
///
/// # Errors
/// [`ModelError::Contract`] on a name/type/shape mismatch, [`ModelError::Tract`] if tract cannot
/// load or analyse the file.
pub(super) fn estimate_flops(path: &Path, inputs: &[InputSpec]) -> Result<u64, ModelError> {
    let tract_err = |e: TractError| tract_error(path, &e);
    let mut model = tract_onnx::onnx().model_for_path(path).map_err(tract_err)?;
    let feeds = resolve_feeds(&declared_inputs(&model).map_err(tract_err)?, inputs).map_err(|source| ModelError::Contract { path: path.to_path_buf(), source })?;
    for (ix, feed) in feeds.iter().enumerate() {
        model.set_input_fact(ix, InferenceFact::dt_shape(feed.datum_type, &feed.shape)).map_err(tract_err)?;
    }
    let typed = model.into_typed().map_err(tract_err)?.into_decluttered().map_err(tract_err)?;
    let mut fma = 0i64;
    for node in typed.nodes() {
        let facts = typed.node_input_facts(node.id).map_err(tract_err)?;
        for (cost, count) in node.op.cost(&facts).map_err(tract_err)? {
            if let tract_core::ops::Cost::FMA(_) = cost {
                fma += count.to_i64().map_err(|e| tract_error(path, &e.into()))?;
            }
        }
    }
    Ok(2 * fma.max(0) as u64)
}

/// Whether this CPU has fp16 arithmetic for tract's f16 kernels (tract's `has_fp16`: FEAT_FP16,
/// `asimdhp`, on aarch64; false on every other architecture, where f16 is emulated).
pub fn has_fp16() -> bool {
    tract_linalg::has_fp16()
}

/// Refuse [`Precision::F16`] on a CPU without [`has_fp16`].
///
/// # Errors
/// [`ModelError::Backend`] without it, unless `emulate` (then a warning: tract emulates f16).
fn check_fp16(emulate: bool) -> Result<(), ModelError> {
    if has_fp16() {
        return Ok(());
    }
    if emulate {
        log::warn!("this CPU has no fp16 arithmetic: tract emulates f16 (for accuracy checks; far slower than f32)");
        return Ok(());
    }
    Err(ModelError::Backend(format!(
        "precision \"f16\" needs a CPU with fp16 arithmetic (ARMv8.2 FEAT_FP16: `asimdhp` in /proc/cpuinfo, e.g. Cortex-A76, A78); \
         this one ({}) has none: use precision = \"f32\"",
        std::env::consts::ARCH
    )))
}

/// tract's f32 -> f16 translation of the feature maps: every node with an output of rank 3 or
/// more (convolutions, matrix products, activations on `[B, C, H, W]` and `[B, L, D]`), except
/// the norms (nodes named `*norm*`, as torch and diffusers name GroupNorm and LayerNorm: their
/// mean and variance over thousands of values lose too much in f16); the timestep embedding and
/// the other small `[B, D]` paths stay f32 (a sinusoid of t ~ 1000 needs more than f16's 11 bits).
fn to_f16() -> FloatPrecisionTranslator {
    FloatPrecisionTranslator::with_filter(DatumType::F32, DatumType::F16, |node| {
        !node.name.to_ascii_lowercase().contains("norm") && node.outputs.iter().any(|o| o.fact.rank() >= 3)
    })
}

/// The matrix-multiply kernels an optimised matmul node says it runs (the `with [...]` list of its
/// `Mult:` info line, e.g. `avx512_mmm_f32_16x12`); none for other nodes.
fn matmul_kernels(info: Vec<String>) -> Vec<String> {
    info.iter()
        .filter_map(|line| line.strip_prefix("Mult:")?.split_once(" with ").map(|(_, k)| k.trim().trim_matches(['[', ']']).to_string()))
        .flat_map(|list| list.split(", ").map(str::to_string).collect::<Vec<_>>())
        .filter(|k| !k.is_empty())
        .collect()
}

impl TractNet {
    /// Load `path`, match its declared inputs to `inputs` ([`resolve_feeds`]) and its outputs to
    /// `outputs` (names, in order), fix every input to its feed's type and shape (batch 1),
    /// optimize and plan.
    ///
    /// # Errors
    /// [`ModelError::Contract`] on a name/type/shape mismatch, [`ModelError::Tract`] if tract cannot
    /// load or optimize it.
    pub(super) fn load(path: &Path, inputs: &[InputSpec], outputs: &[&str], backend: &Backend) -> Result<Self, ModelError> {
        let threads = backend.threads;
        let tract_err = |e: TractError| tract_error(path, &e);
        let contract = |source| ModelError::Contract { path: path.to_path_buf(), source };
        let mut model = tract_onnx::onnx().model_for_path(path).map_err(tract_err)?;
        let feeds = resolve_feeds(&declared_inputs(&model).map_err(tract_err)?, inputs).map_err(contract)?;
        for (ix, feed) in feeds.iter().enumerate() {
            model.set_input_fact(ix, InferenceFact::dt_shape(feed.datum_type, &feed.shape)).map_err(tract_err)?;
        }
        let out_names: Vec<String> = model
            .output_outlets()
            .map_err(tract_err)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string())
            .collect();
        check_names("outputs", &out_names, outputs).map_err(contract)?;
        let options = RunOptions { executor: Some(executor(threads)?), ..RunOptions::default() };
        let mut typed = model.into_typed().map_err(tract_err)?.into_decluttered().map_err(tract_err)?;
        let fused = fuse_group_norms(&mut typed).map_err(tract_err)?;
        log::debug!("{}: {fused} GroupNorm chains fused", path.display());
        let typed = match backend.precision {
            Precision::F32 => typed,
            Precision::F16 => {
                check_fp16(backend.emulate_f16)?;
                to_f16().transform_into(typed).map_err(tract_err)?
            }
        };
        let plan = typed.into_optimized().map_err(tract_err)?.into_runnable_with_options(&options).map_err(tract_err)?;
        Ok(Self { plan, feeds, threads, precision: backend.precision, states: Mutex::new(Vec::new()) })
    }

    /// Threads of one run (1: the calling thread).
    pub(super) fn threads(&self) -> usize {
        self.threads
    }

    /// The precision the plan computes in.
    pub(super) fn precision(&self) -> Precision {
        self.precision
    }

    /// `inputs` (contract order) converted to the file's types and shapes, in file order.
    fn feed(&self, path: &Path, inputs: &[Tensor]) -> Result<TVec<TValue>, ModelError> {
        self.feeds
            .iter()
            .map(|f| {
                let t = inputs.get(f.spec).ok_or_else(|| ModelError::Tract {
                    path: path.to_path_buf(),
                    message: format!("{} inputs given, input {:?} missing", inputs.len(), f.name),
                })?;
                let t = f.convert(t).map_err(|e| tract_error(path, &e))?;
                // An f16 plan takes its float inputs in f16 (cast at the edge).
                let t = match self.precision {
                    Precision::F16 if t.datum_type() == DatumType::F32 => t.cast_to::<f16>().map_err(|e| tract_error(path, &e))?.into_owned(),
                    _ => t,
                };
                Ok(t.into_tvalue())
            })
            .collect()
    }

    /// Run on `inputs` (contract order) and return the first `outputs` outputs as f32 arrays.
    ///
    /// # Errors
    /// [`ModelError::Tract`] naming `path` when tract fails or an output is not f32.
    pub(super) fn run(&self, path: &Path, inputs: &[Tensor], outputs: usize) -> Result<Vec<ArrayD<f32>>, ModelError> {
        let inputs = self.feed(path, inputs)?;
        let free = self.states.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut state = match free {
            Some(state) => state,
            None => self.plan.spawn().map_err(|e| tract_error(path, &e))?,
        };
        let out = state.run(inputs).map_err(|e| tract_error(path, &e))?;
        // A state whose run failed is dropped, not reused.
        self.states.lock().unwrap_or_else(PoisonError::into_inner).push(state);
        out.into_iter()
            .take(outputs)
            .map(|v| {
                let t = v.into_tensor();
                let t = if t.datum_type() == DatumType::F16 { t.cast_to::<f32>().map(|c| c.into_owned()) } else { Ok(t) };
                t.and_then(|t| t.into_plain_array::<f32>()).map_err(|e| tract_error(path, &e))
            })
            .collect()
    }

    /// Run `runs` times on `inputs`, timing every node; the time per operator kind, largest
    /// first (what tract's profiler shows, without its CLI).
    ///
    /// # Errors
    /// [`ModelError::Tract`] naming `path` when tract fails.
    pub(super) fn profile(&self, path: &Path, inputs: &[Tensor], runs: usize) -> Result<Vec<OpTime>, ModelError> {
        let mut state = tract_core::plan::SimpleState::new(&self.plan).map_err(|e| tract_error(path, &e))?;
        let mut total: BTreeMap<String, f64> = BTreeMap::new();
        let mut nodes: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        let mut kernels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let runs = runs.max(1);
        for _ in 0..runs {
            let inputs = self.feed(path, inputs)?;
            state
                .run_plan_with_eval(inputs, |ctx, op_state, node, input| {
                    let start = std::time::Instant::now();
                    let out = tract_core::plan::eval(ctx, op_state, node, input);
                    let name = node.op().name().to_string();
                    *total.entry(name.clone()).or_default() += start.elapsed().as_secs_f64() * 1e3;
                    if nodes.entry(name.clone()).or_default().insert(node.id) {
                        kernels.entry(name).or_default().extend(matmul_kernels(node.op().info().unwrap_or_default()));
                    }
                    out
                })
                .map_err(|e| tract_error(path, &e))?;
        }
        let mut times: Vec<OpTime> =
            total
                .into_iter()
                .map(|(op, ms)| OpTime {
                    nodes: nodes[&op].len(),
                    kernels: kernels.remove(&op).unwrap_or_default().into_iter().collect(),
                    op,
                    ms: ms / runs as f64,
                })
                .collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}
