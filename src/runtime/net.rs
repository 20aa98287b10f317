//! [`Net`]: one ONNX file of a model directory, loaded once for batch 1 by the chosen
//! [`Backend`] and checked against the contract's input and output names, types and shapes.

use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD, Ix4};
use tract_onnx::prelude::Tensor;

use super::backend::{Backend, BackendKind, MAX_THREADS, Precision, describe_run};
#[cfg(not(feature = "onnxruntime"))]
use super::backend::NO_ONNXRUNTIME;
use super::error::ModelError;
use super::feed::InputSpec;
#[cfg(feature = "onnxruntime")]
use super::onnxruntime::OrtNet;
use super::tract::TractNet;

/// One loaded ONNX file with the input/output names of the contract, run by one backend; any
/// number of threads may run it at once (see [`Backend::concurrency`]).
pub struct Net {
    path: PathBuf,
    outputs: usize,
    engine: Engine,
}

/// The backend-specific part of a [`Net`].
enum Engine {
    Tract(TractNet),
    #[cfg(feature = "onnxruntime")]
    Onnxruntime(OrtNet),
}

/// Time spent in one kind of operator during [`Net::profile`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    /// tract's operator name after optimization (e.g. `Conv`, `OptMatMul`, `Reduce<Sum>`).
    pub op: String,
    /// Nodes of that operator in the plan.
    pub nodes: usize,
    /// The matrix-multiply kernels its nodes run (tract's names, e.g. `fma_mmm_f32_16x6`;
    /// matrix products only, else empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<String>,
    /// Mean time per run, ms.
    pub ms: f64,
}

impl Net {
    /// Load `path` with `backend`, match its declared inputs to `inputs` by name (any order; shape
    /// with batch first, the batch axis may be symbolic in the file; each fed with the element type
    /// and rank the file declares, [`InputSpec`]) and check that its outputs are `outputs` (names,
    /// in this order), and prepare it for batch 1 (tract: fix the inputs, optimize and plan;
    /// onnxruntime: a session with all graph optimizations).
    ///
    /// # Errors
    /// [`ModelError::Io`] if missing, [`ModelError::Contract`] on a name/shape mismatch,
    /// [`ModelError::Tract`] / [`ModelError::Onnxruntime`] if the backend cannot load or optimize
    /// it, [`ModelError::Backend`] if the backend is not built in or its library cannot be loaded.
    pub fn load(path: &Path, inputs: &[InputSpec], outputs: &[&str], backend: &Backend) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        if !(1..=MAX_THREADS).contains(&backend.threads) {
            return Err(ModelError::Backend(format!("threads must be within 1..={MAX_THREADS}, got {}", backend.threads)));
        }
        if backend.precision == Precision::F16 && backend.kind != BackendKind::Tract {
            return Err(ModelError::Backend(format!("precision \"f16\" is tract's only; {} runs f32", backend.kind.name())));
        }
        let engine = match backend.kind {
            BackendKind::Tract => Engine::Tract(TractNet::load(path, inputs, outputs, backend)?),
            #[cfg(feature = "onnxruntime")]
            BackendKind::Onnxruntime => Engine::Onnxruntime(OrtNet::load(path, inputs, outputs, backend)?),
            #[cfg(not(feature = "onnxruntime"))]
            BackendKind::Onnxruntime => return Err(ModelError::Backend(NO_ONNXRUNTIME.into())),
        };
        Ok(Self { path: path.to_path_buf(), outputs: outputs.len(), engine })
    }

    /// The ONNX file this net was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which backend runs this net: `tract, N thread(s)` or `onnxruntime VERSION, N thread(s)`
    /// (the version as read from the library's file name).
    pub fn backend_description(&self) -> String {
        match &self.engine {
            Engine::Tract(net) => describe_run(BackendKind::Tract.name(), net.threads(), net.precision()),
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(net) => net.description(),
        }
    }

    /// The onnxruntime shared library that runs this net (absolute path); `None` for tract.
    pub fn onnxruntime_library(&self) -> Option<&Path> {
        match &self.engine {
            Engine::Tract(_) => None,
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(net) => Some(net.library()),
        }
    }

    /// Run on `inputs` (in the order of the [`InputSpec`]s it was loaded with, batch 1: f32 for
    /// floats and timesteps, int64 for token ids; each is converted to what the file takes) and
    /// return the outputs, in contract order, as `[B, C, H, W]` arrays.
    ///
    /// # Errors
    /// [`ModelError::Tract`] / [`ModelError::Onnxruntime`] when the backend fails (wrong input
    /// count, type or shape) or an output is not 4-D.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Array4<f32>>, ModelError> {
        self.run_dyn(&inputs)?
            .into_iter()
            .map(|a| {
                a.into_dimensionality::<Ix4>().map_err(|e| self.backend_error(format!("output is not [B, C, H, W]: {e}")))
            })
            .collect()
    }

    /// As [`Net::run`], with outputs of any rank (e.g. a text encoder's `[B, L, D]`).
    ///
    /// # Errors
    /// As [`Net::run`], except for the rank.
    pub fn run_dyn(&self, inputs: &[Tensor]) -> Result<Vec<ArrayD<f32>>, ModelError> {
        match &self.engine {
            Engine::Tract(net) => net.run(&self.path, inputs, self.outputs),
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(net) => net.run(&self.path, inputs),
        }
    }

    /// A backend error naming this net's file.
    fn backend_error(&self, message: String) -> ModelError {
        match &self.engine {
            Engine::Tract(_) => ModelError::Tract { path: self.path.clone(), message },
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(_) => ModelError::Onnxruntime { path: self.path.clone(), message },
        }
    }

    /// Run `runs` times on `inputs`, timing every node; returns the time per operator kind,
    /// largest first (what tract's profiler shows, without its CLI). tract nets only.
    ///
    /// # Errors
    /// [`ModelError::Tract`] when tract fails, [`ModelError::Backend`] for another backend.
    pub fn profile(&self, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<OpTime>, ModelError> {
        match &self.engine {
            Engine::Tract(net) => net.profile(&self.path, &inputs, runs),
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(_) => {
                Err(ModelError::Backend(format!("{}: operator profiles need the tract backend", self.path.display())))
            }
        }
    }
}

/// Floating-point operations of one run of the ONNX file `path` at batch 1 with `inputs`, as
/// tract estimates them (2 per multiply-add of convolutions and matrix products), whatever
/// backend runs the model.
///
/// # Errors
/// The file is missing, breaks the contract, or tract cannot analyse it.
pub fn estimate_flops(path: &Path, inputs: &[InputSpec]) -> Result<u64, ModelError> {
    if !path.is_file() {
        return Err(ModelError::Io { path: path.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found") });
    }
    super::tract::estimate_flops(path, inputs)
}
