//! Model loading: the ONNX files of a model directory, loaded once for batch 1 by the chosen
//! inference [`Backend`] (tract by default; onnxruntime with the cargo feature `onnxruntime`) and
//! checked against `model.toml` (a mismatch names the file, the tensor and the shapes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{Array4, ArrayD, Ix4};
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::model_info::{ModelError, ModelInfo};

/// The kind of inference backend, as named in `edge.toml` (`[runtime] backend`) and on the
/// command line (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Pure Rust, always built in, runs on one thread.
    #[default]
    Tract,
    /// Loaded at run time from a user-supplied libonnxruntime; needs a binary built
    /// with the cargo feature `onnxruntime`.
    Onnxruntime,
}

impl BackendKind {
    /// `"tract"` or `"onnxruntime"`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Onnxruntime => "onnxruntime",
        }
    }
}

/// The inference backend that runs a model's ONNX files, with its settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// tract (the default): optimized plans built once, one thread.
    #[default]
    Tract,
    /// onnxruntime through the `ort` crate (cargo feature `onnxruntime`); the library is loaded
    /// once per process, on the first load of a net.
    Onnxruntime {
        /// The `libonnxruntime` shared library (1.17 or newer); `None` = the `ORT_DYLIB_PATH`
        /// environment variable. A relative path is taken from the working directory.
        library: Option<PathBuf>,
        /// Intra-op threads of every session (at least 1).
        threads: usize,
    },
}

impl Backend {
    /// The backend of `kind`; `library` and `threads` apply to onnxruntime only.
    pub fn new(kind: BackendKind, library: Option<PathBuf>, threads: usize) -> Self {
        match kind {
            BackendKind::Tract => Backend::Tract,
            BackendKind::Onnxruntime => Backend::Onnxruntime { library, threads },
        }
    }

    /// An onnxruntime backend from `ORT_DYLIB_PATH` with `threads` intra-op threads.
    pub fn onnxruntime(threads: usize) -> Self {
        Backend::Onnxruntime { library: None, threads }
    }

    /// Its kind.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Tract => BackendKind::Tract,
            Backend::Onnxruntime { .. } => BackendKind::Onnxruntime,
        }
    }

    /// Threads used by one inference call (tract: always 1).
    pub fn threads(&self) -> usize {
        match self {
            Backend::Tract => 1,
            Backend::Onnxruntime { threads, .. } => *threads,
        }
    }

    /// Short human text: `tract` or `onnxruntime, N thread(s)`.
    pub fn describe(&self) -> String {
        match self {
            Backend::Tract => "tract".into(),
            Backend::Onnxruntime { threads, .. } => format!("onnxruntime, {}", thread_count(*threads)),
        }
    }
}

/// Whether this binary was built with the onnxruntime backend (cargo feature `onnxruntime`).
pub const ONNXRUNTIME_BUILT_IN: bool = cfg!(feature = "onnxruntime");

/// The message of a binary built without the onnxruntime backend.
pub const NO_ONNXRUNTIME: &str = "the onnxruntime backend is not available: mcm-edge was built without the onnxruntime feature \
                                  (rebuild with `cargo build --release --features onnxruntime`)";

/// One loaded ONNX file with the input/output names of the contract, run by one backend.
pub struct Net {
    path: PathBuf,
    outputs: usize,
    engine: Engine,
}

/// The backend-specific part of a [`Net`].
enum Engine {
    Tract(Arc<TypedRunnableModel>),
    #[cfg(feature = "onnxruntime")]
    Onnxruntime(crate::ort_backend::OrtNet),
}

/// `1 thread` or `N threads`.
pub(crate) fn thread_count(threads: usize) -> String {
    format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
}

/// Check that a file's input or output names (`what`: "inputs" / "outputs") are the contract's
/// `want`, in order. `Err` is the contract message.
pub(crate) fn check_names(what: &str, got: &[String], want: &[&str]) -> Result<(), String> {
    if got == want { Ok(()) } else { Err(format!("{what} are {got:?}, the contract needs {want:?}")) }
}

/// Check one input's declared dims (`"?"` or a symbol for a dynamic axis) against the contract's
/// `shape` (batch first; the batch is not compared). `Err` is the contract message.
pub(crate) fn check_input_dims(name: &str, declared: &[String], shape: &[usize]) -> Result<(), String> {
    let rank_ok = declared.len() == shape.len();
    let dims_ok = rank_ok && declared.iter().zip(shape).skip(1).all(|(d, s)| d == "?" || d.parse::<usize>().map_or(true, |d| d == *s));
    if dims_ok {
        Ok(())
    } else {
        Err(format!(
            "input {name:?} is declared {declared:?}, model.toml needs [batch, {}]",
            shape[1..].iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        ))
    }
}

impl Net {
    /// Load `path` with tract; see [`Net::load_with`].
    ///
    /// # Errors
    /// As [`Net::load_with`].
    pub fn load(path: &Path, inputs: &[(&str, Vec<usize>)], outputs: &[&str]) -> Result<Self, ModelError> {
        Self::load_with(path, inputs, outputs, &Backend::Tract)
    }

    /// Load `path` with `backend`, check that its inputs are `inputs` (name, shape with batch
    /// first; the batch axis may be symbolic in the file; element type f32) and its outputs are
    /// `outputs` (names, in this order), and prepare it for batch 1 (tract: fix the batch, optimize
    /// and plan; onnxruntime: a session with all graph optimizations).
    ///
    /// # Errors
    /// [`ModelError::Io`] if missing, [`ModelError::Contract`] on a name/shape mismatch,
    /// [`ModelError::Tract`] / [`ModelError::Onnxruntime`] if the backend cannot load or optimize
    /// it, [`ModelError::Backend`] if the backend is not built in or its library cannot be loaded.
    pub fn load_with(path: &Path, inputs: &[(&str, Vec<usize>)], outputs: &[&str], backend: &Backend) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            });
        }
        let engine = match backend {
            Backend::Tract => Engine::Tract(Self::tract_plan(path, inputs, outputs)?),
            #[cfg(feature = "onnxruntime")]
            Backend::Onnxruntime { library, threads } => {
                Engine::Onnxruntime(crate::ort_backend::OrtNet::load(path, inputs, outputs, library.as_deref(), *threads)?)
            }
            #[cfg(not(feature = "onnxruntime"))]
            Backend::Onnxruntime { .. } => return Err(ModelError::Backend(NO_ONNXRUNTIME.into())),
        };
        Ok(Self { path: path.to_path_buf(), outputs: outputs.len(), engine })
    }

    fn tract_plan(path: &Path, inputs: &[(&str, Vec<usize>)], outputs: &[&str]) -> Result<Arc<TypedRunnableModel>, ModelError> {
        let tract_err = |e: TractError| ModelError::Tract { path: path.to_path_buf(), message: format!("{e:#}") };
        let contract = |message: String| ModelError::Contract { path: path.to_path_buf(), message };
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
        model.into_optimized().map_err(tract_err)?.into_runnable().map_err(tract_err)
    }

    /// The ONNX file this net was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which backend runs this net: `tract` or `onnxruntime VERSION, N thread(s)` (the version
    /// as read from the library's file name).
    pub fn backend_description(&self) -> String {
        match &self.engine {
            Engine::Tract(_) => "tract".into(),
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

    /// Run on `inputs` (f32 tensors in contract order, batch 1) and return the outputs, in
    /// contract order, as `[B, C, H, W]` arrays.
    ///
    /// # Errors
    /// [`ModelError::Tract`] / [`ModelError::Onnxruntime`] when the backend fails (wrong input
    /// count, type or shape) or an output is not 4-D.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Array4<f32>>, ModelError> {
        match &self.engine {
            Engine::Tract(plan) => {
                let err = |message: String| ModelError::Tract { path: self.path.clone(), message };
                let out = plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect()).map_err(|e| err(format!("{e:#}")))?;
                out.into_iter()
                    .take(self.outputs)
                    .map(|v| {
                        let a: ArrayD<f32> = v.into_tensor().into_plain_array::<f32>().map_err(|e| err(format!("{e:#}")))?;
                        a.into_dimensionality::<Ix4>().map_err(|e| err(format!("output is not [B, C, H, W]: {e}")))
                    })
                    .collect()
            }
            #[cfg(feature = "onnxruntime")]
            Engine::Onnxruntime(net) => net.run(&self.path, &inputs),
        }
    }
}

/// Time spent in one kind of operator during [`Net::profile`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    /// tract's operator name after optimization (e.g. `Conv`, `OptMatMul`, `Reduce<Sum>`).
    pub op: String,
    /// Nodes of that operator in the plan.
    pub nodes: usize,
    /// Mean time per run, ms.
    pub ms: f64,
}

impl Net {
    /// Run `runs` times on `inputs`, timing every node; returns the time per operator kind,
    /// largest first (what tract's profiler shows, without its CLI). tract nets only.
    ///
    /// # Errors
    /// [`ModelError::Tract`] when tract fails, [`ModelError::Backend`] for another backend.
    pub fn profile(&self, inputs: Vec<Tensor>, runs: usize) -> Result<Vec<OpTime>, ModelError> {
        use std::collections::{BTreeMap, BTreeSet};
        let err = |message: String| ModelError::Tract { path: self.path.clone(), message };
        #[cfg_attr(not(feature = "onnxruntime"), allow(irrefutable_let_patterns))]
        let Engine::Tract(plan) = &self.engine else {
            return Err(ModelError::Backend(format!("{}: operator profiles need the tract backend", self.path.display())));
        };
        let mut state = tract_core::plan::SimpleState::new(plan).map_err(|e| err(format!("{e:#}")))?;
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
                .map_err(|e| err(format!("{e:#}")))?;
        }
        let mut times: Vec<OpTime> =
            total.into_iter().map(|(op, ms)| OpTime { nodes: nodes[&op].len(), op, ms: ms / runs as f64 }).collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(times)
    }
}

/// A `[B]` timestep tensor.
pub fn timestep_tensor(t: f32, batch: usize) -> Tensor {
    tract_ndarray::Array1::from_elem(batch, t).into_tensor()
}

/// The nets of a model directory, loaded once.
pub struct Models {
    pub info: ModelInfo,
    pub dir: PathBuf,
    /// `base.onnx`: (sample [1,C,H,W], timestep [1]) -> eps [1,C,H,W].
    pub base: Net,
    /// `mcm.onnx`: (sample, eps [1,C,H,W], cond [1,K,H,W], timestep [1]) -> gamma, beta [1,C,H,W].
    pub mcm: Option<Net>,
}

impl Models {
    /// Load and check `DIR/model.toml`, `base.onnx` and (when listed) `mcm.onnx` with tract.
    ///
    /// # Errors
    /// Any [`ModelError`] of the files, naming the file.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Self::load_with(dir, &Backend::Tract)
    }

    /// Load and check `DIR/model.toml`, `base.onnx` and (when listed) `mcm.onnx` with `backend`
    /// (the same contract checks for every backend).
    ///
    /// # Errors
    /// Any [`ModelError`] of the files, naming the file; [`ModelError::Backend`] when the backend
    /// cannot be used.
    pub fn load_with(dir: &Path, backend: &Backend) -> Result<Self, ModelError> {
        let info = ModelInfo::load(dir)?;
        let (c, s) = (info.image.channels, info.image.size);
        let image = vec![1, c, s, s];
        let base = Net::load_with(&dir.join(&info.base.file), &[("sample", image.clone()), ("timestep", vec![1])], &["eps"], backend)?;
        let mcm = match &info.mcm {
            Some(m) => Some(Net::load_with(
                &dir.join(&m.file),
                &[("sample", image.clone()), ("eps", image.clone()), ("cond", vec![1, m.cond_channels, s, s]), ("timestep", vec![1])],
                &["gamma", "beta"],
                backend,
            )?),
            None => None,
        };
        Ok(Self { info, dir: dir.to_path_buf(), base, mcm })
    }
}

/// Load the reference segmenter of a model directory (`[segmenter]` in model.toml) with tract:
/// image [1, 3, H, W] in the model's value range -> logits [1, classes, H, W].
///
/// # Errors
/// No `[segmenter]` section, or any [`ModelError`] of the file.
pub fn load_segmenter(dir: &Path, info: &ModelInfo) -> Result<Net, ModelError> {
    load_segmenter_with(dir, info, &Backend::Tract)
}

/// [`load_segmenter`] with `backend`.
///
/// # Errors
/// As [`load_segmenter`], and [`ModelError::Backend`] when the backend cannot be used.
pub fn load_segmenter_with(dir: &Path, info: &ModelInfo, backend: &Backend) -> Result<Net, ModelError> {
    let seg = info.segmenter.as_ref().ok_or_else(|| ModelError::Contract {
        path: dir.join("model.toml"),
        message: "no [segmenter] section: train one with `mcm-train segmenter`".into(),
    })?;
    let s = info.image.size;
    Net::load_with(&dir.join(&seg.file), &[("image", vec![1, 3, s, s])], &["logits"], backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the committed `models/tiny` fixture in a fresh temp dir, with `edit` applied to model.toml.
    fn tiny_copy(tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        let dst = std::env::temp_dir().join(format!("mcm-edge-model-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["base.onnx", "mcm.onnx", "segmenter.onnx"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
        std::fs::write(dst.join("model.toml"), edit(toml)).unwrap();
        dst
    }

    #[test]
    fn loads_the_tiny_fixture() {
        let m = Models::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny")).unwrap();
        assert_eq!(m.info.image.size, 16);
        assert!(m.mcm.is_some());
    }

    #[test]
    fn size_mismatch_names_file_tensor_and_shapes() {
        let dir = tiny_copy("size", |t| t.replacen("size = 16", "size = 32", 1));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("base.onnx") && err.contains("sample") && err.contains("32"), "{err}");
    }

    #[test]
    fn cond_channel_mismatch_is_refused() {
        let dir = tiny_copy("cond", |t| t.replace("cond_channels = 11", "cond_channels = 12"));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("model.toml") && err.contains("cond_channels"), "{err}");
    }

    #[test]
    fn corrupt_onnx_is_refused_with_its_path() {
        let dir = tiny_copy("corrupt", |t| t);
        std::fs::write(dir.join("mcm.onnx"), b"not an onnx file").unwrap();
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("mcm.onnx"), "{err}");
    }

    #[test]
    fn missing_key_is_refused() {
        let dir = tiny_copy("key", |t| t.replace("num_train_timesteps = 1000\n", ""));
        let err = Models::load(&dir).err().expect("must refuse").to_string();
        assert!(err.contains("num_train_timesteps"), "{err}");
    }
}
