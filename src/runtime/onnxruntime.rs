//! The optional onnxruntime backend of [`Net`](super::Net) (cargo feature `onnxruntime`).
//!
//! onnxruntime is not linked: the `ort` crate loads a user-supplied `libonnxruntime` shared
//! library (1.17 or newer) at run time, once per process, from `[runtime] onnxruntime_library` /
//! `--ort-library` or else the `ORT_DYLIB_PATH` environment variable. Every net then gets its own
//! sessions (one per concurrent call): all graph optimizations, `threads` intra-op threads, one inter-op thread, sequential
//! execution (the settings of `bench/ort_bench.py`), and intra-op threads that block instead of
//! spin-waiting between calls (`session.intra_op.allow_spinning = 0`): on a small shared device
//! spinning threads take the cores from the rest of the service (and, in `mcm-edge bench`, from
//! the other backends timed in the same process). With one thread there is no pool to spin.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use ndarray::{ArrayD, IxDyn};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::SessionInputValue;
use ort::value::{TensorElementType, TensorRef, ValueType};
use tract_onnx::prelude::{DatumType, Tensor};

use super::backend::Backend;
use super::checks::{ContractMismatch, check_names, thread_count};
use super::error::ModelError;
use super::feed::{Declared, Feed, InputSpec, resolve_feeds};

/// The environment variable naming the library when no path is configured (the `ort` crate's).
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";

/// The process's onnxruntime: one library and one environment per process (an `ort` rule).
struct Runtime {
    library: PathBuf,
    version: String,
    env: Environment,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

/// The library to load: `configured`, else `$ORT_DYLIB_PATH`; made absolute against the working
/// directory (the `ort` crate would otherwise look next to the executable first).
fn library_path(configured: Option<&Path>) -> Result<PathBuf, ModelError> {
    let (path, origin) = match configured {
        Some(p) => (p.to_path_buf(), "configured"),
        None => match std::env::var_os(ORT_DYLIB_PATH) {
            Some(p) if !p.is_empty() => (PathBuf::from(p), ORT_DYLIB_PATH),
            _ => {
                return Err(ModelError::Backend(format!(
                    "onnxruntime backend: no library given: set `onnxruntime_library` in [runtime] of the config, \
                     pass --ort-library, or set {ORT_DYLIB_PATH} to a libonnxruntime shared library (1.17 or newer)"
                )));
            }
        },
    };
    let path = if path.is_relative() { std::env::current_dir().map(|d| d.join(&path)).unwrap_or(path) } else { path };
    if !path.is_file() {
        return Err(ModelError::Backend(format!("onnxruntime library {} ({origin}): file not found", path.display())));
    }
    Ok(path)
}

/// The version in a library file name such as `libonnxruntime.so.1.32.0` (after resolving
/// symbolic links), e.g. `1.32.0`; `None` when the name has none.
fn version_from_file_name(library: &Path) -> Option<String> {
    let real = library.canonicalize().unwrap_or_else(|_| library.to_path_buf());
    let name = real.file_name()?.to_str()?;
    let version = name.rsplit_once(".so.").map(|(_, v)| v).or_else(|| name.strip_suffix(".dylib")?.rsplit_once('.').map(|(_, v)| v))?;
    (version.split('.').count() >= 2 && version.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())))
        .then(|| version.to_string())
}

/// Load the library (first call) and return the process's environment, the library path and
/// onnxruntime's version.
///
/// # Errors
/// [`ModelError::Backend`] naming the library when it is missing, cannot be loaded or is too
/// old, or when another library is already loaded in this process.
fn runtime(configured: Option<&Path>) -> Result<(Environment, PathBuf, String), ModelError> {
    let library = library_path(configured)?;
    let mut slot = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(rt) = slot.as_ref() {
        let same = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        if same(&rt.library) != same(&library) {
            return Err(ModelError::Backend(format!(
                "onnxruntime library {}: this process has already loaded {} (one onnxruntime library per process)",
                library.display(),
                rt.library.display()
            )));
        }
        return Ok((rt.env.clone(), rt.library.clone(), rt.version.clone()));
    }
    let cannot = |e: &dyn std::fmt::Display| ModelError::Backend(format!("onnxruntime library {}: cannot load: {e}", library.display()));
    let builder = ort::init_from(&library).map_err(|e| cannot(&e))?;
    let env = builder.with_name("mcm-edge").with_telemetry(false).build().map_err(|e| cannot(&e))?;
    let version = version_from_file_name(&library).unwrap_or_else(|| "(version not in the file name)".into());
    log::info!("onnxruntime {version} loaded from {}", library.display());
    *slot = Some(Runtime { library: library.clone(), version: version.clone(), env: env.clone() });
    Ok((env, library, version))
}

/// One ONNX file as an onnxruntime session, with the contract's input and output names.
pub(crate) struct OrtNet {
    /// The sessions not in use (`Backend::concurrency` of them, each with its own weights):
    /// `Session::run` takes `&mut self`, so a call takes one and puts it back; a call that finds
    /// none waits on `returned`.
    sessions: Mutex<Vec<Session>>,
    returned: Condvar,
    /// The feed of each input, in the file's order.
    feeds: Vec<Feed>,
    outputs: Vec<String>,
    description: String,
    library: PathBuf,
}

impl OrtNet {
    /// Create `backend.concurrency` sessions for `path` with `backend.threads` intra-op threads
    /// each and check the contract (inputs matched by name, [`resolve_feeds`]; output names and
    /// order).
    ///
    /// # Errors
    /// [`ModelError::Backend`] for the library (see [`runtime`]), [`ModelError::Onnxruntime`] when
    /// onnxruntime refuses the file, [`ModelError::Contract`] on a name/shape/type mismatch.
    pub(crate) fn load(
        path: &Path,
        inputs: &[InputSpec],
        outputs: &[&str],
        backend: &Backend,
    ) -> Result<Self, ModelError> {
        let threads = backend.threads;
        if threads == 0 {
            return Err(ModelError::Backend("onnxruntime backend: threads must be at least 1".into()));
        }
        let (env, library, version) = runtime(backend.onnxruntime_library.as_deref())?;
        let contract = |source| ModelError::Contract { path: path.to_path_buf(), source };
        let sessions = (0..backend.concurrency.max(1)).map(|_| session(&env, path, threads)).collect::<Result<Vec<_>, _>>()?;
        let session = &sessions[0];
        let declared = session.inputs().iter().map(|o| declared(o.name(), o.dtype())).collect::<Result<Vec<_>, _>>().map_err(contract)?;
        let feeds = resolve_feeds(&declared, inputs).map_err(contract)?;
        let out_names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        check_names("outputs", &out_names, outputs).map_err(contract)?;
        Ok(Self {
            sessions: Mutex::new(sessions),
            returned: Condvar::new(),
            feeds,
            outputs: out_names,
            description: format!("onnxruntime {version}, {}", thread_count(threads)),
            library,
        })
    }

    /// `onnxruntime VERSION, N thread(s)`.
    pub(crate) fn description(&self) -> String {
        self.description.clone()
    }

    /// The shared library that runs this net (absolute path).
    pub(crate) fn library(&self) -> &Path {
        &self.library
    }

    /// Run on `inputs` (contract order; each converted to what the file takes) and return the
    /// outputs in contract order as f32 arrays.
    ///
    /// # Errors
    /// [`ModelError::Onnxruntime`] naming `path` when the inputs do not fit or onnxruntime fails.
    pub(crate) fn run(&self, path: &Path, inputs: &[Tensor]) -> Result<Vec<ArrayD<f32>>, ModelError> {
        let err = |message: String| ModelError::Onnxruntime { path: path.to_path_buf(), message };
        let fed: Vec<Tensor> = self
            .feeds
            .iter()
            .map(|f| {
                let t = inputs.get(f.spec).ok_or_else(|| err(format!("{} inputs given, input {:?} missing", inputs.len(), f.name)))?;
                f.convert(t).map_err(|e| err(format!("input {:?}: {e:#}", f.name)))
            })
            .collect::<Result<_, _>>()?;
        let mut feeds = Vec::with_capacity(fed.len());
        for (t, f) in fed.iter().zip(&self.feeds) {
            feeds.push((f.name.as_str(), ort_value(t).map_err(|e| err(format!("input {:?}: {e}", f.name)))?));
        }
        let mut session = self.take_session();
        let result = session.run(feeds).map_err(|e| err(e.to_string())).and_then(|out| {
            self.outputs
                .iter()
                .map(|name| {
                    let value = out.get(name).ok_or_else(|| err(format!("no output {name:?}")))?;
                    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| err(format!("output {name:?}: {e}")))?;
                    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                    ArrayD::from_shape_vec(IxDyn(&dims), data.to_vec()).map_err(|e| err(format!("output {name:?}: {e}")))
                })
                .collect()
        });
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner).push(session);
        self.returned.notify_one();
        result
    }

    /// A session not in use, waiting for one when all are running.
    fn take_session(&self) -> Session {
        let mut free = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(session) = free.pop() {
                return session;
            }
            free = self.returned.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A session of `path` with all graph optimizations and `threads` intra-op threads (see the
/// module's settings).
///
/// # Errors
/// [`ModelError::Onnxruntime`] when onnxruntime refuses the file or a setting.
fn session(env: &Environment, path: &Path, threads: usize) -> Result<Session, ModelError> {
    let ort_err = |e: &dyn std::fmt::Display| ModelError::Onnxruntime { path: path.to_path_buf(), message: e.to_string() };
    Session::builder(env)
        .map_err(|e| ort_err(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| ort_err(&e))?
        .with_intra_threads(threads)
        .map_err(|e| ort_err(&e))?
        .with_inter_threads(1)
        .map_err(|e| ort_err(&e))?
        .with_parallel_execution(false)
        .map_err(|e| ort_err(&e))?
        .with_intra_op_spinning(false)
        .map_err(|e| ort_err(&e))?
        .commit_from_file(path)
        .map_err(|e| ort_err(&e))
}

/// An input as onnxruntime declares it, in the terms of [`resolve_feeds`].
///
/// # Errors
/// [`ContractMismatch::NotATensor`] for a sequence or map input.
fn declared(name: &str, ty: &ValueType) -> Result<Declared, ContractMismatch> {
    let ValueType::Tensor { ty, shape, dimension_symbols } = ty else {
        return Err(ContractMismatch::NotATensor { name: name.to_string() });
    };
    let datum_type = match ty {
        TensorElementType::Float32 => DatumType::F32,
        TensorElementType::Float64 => DatumType::F64,
        TensorElementType::Float16 => DatumType::F16,
        TensorElementType::Int64 => DatumType::I64,
        TensorElementType::Int32 => DatumType::I32,
        TensorElementType::Uint8 => DatumType::U8,
        TensorElementType::Bool => DatumType::Bool,
        _ => DatumType::String, // refused by resolve_feeds, named by its debug form below
    };
    let dims = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match d {
            d if d >= 0 => d.to_string(),
            _ => dimension_symbols.get(i).filter(|s| !s.is_empty()).cloned().unwrap_or_else(|| "?".into()),
        })
        .collect();
    Ok(Declared { name: name.to_string(), datum_type: Some(datum_type), dims: Some(dims) })
}

/// A borrowed onnxruntime tensor of `t` (f32, f64, int64 or int32: what [`Feed`]s produce).
fn ort_value(t: &Tensor) -> Result<SessionInputValue<'_>, String> {
    fn view<'a, T: tract_onnx::prelude::Datum + ort::value::PrimitiveTensorElementType + std::fmt::Debug>(
        t: &'a Tensor,
    ) -> Result<SessionInputValue<'a>, String> {
        let view = t.to_plain_array_view::<T>().map_err(|e| format!("{e:#}"))?;
        let data = view.to_slice().ok_or("not contiguous")?;
        let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        TensorRef::from_array_view((shape, data)).map(SessionInputValue::from).map_err(|e| e.to_string())
    }
    match t.datum_type() {
        DatumType::F32 => view::<f32>(t),
        DatumType::F64 => view::<f64>(t),
        DatumType::I64 => view::<i64>(t),
        DatumType::I32 => view::<i32>(t),
        other => Err(format!("element type {other:?} is not fed")),
    }
}
