//! Which inference backend runs a model: [`BackendKind`] as named in `edge.toml` and on the
//! command line, [`Backend`] with its settings, and the `[runtime]` section ([`RuntimeConfig`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::checks::thread_count;

/// Whether this binary was built with the onnxruntime backend (cargo feature `onnxruntime`).
pub const ONNXRUNTIME_BUILT_IN: bool = cfg!(feature = "onnxruntime");

/// The message of a binary built without the onnxruntime backend.
pub const NO_ONNXRUNTIME: &str = "the onnxruntime backend is not available: mcm-edge was built without the onnxruntime feature \
                                  (rebuild with `cargo build --release --features onnxruntime`)";

/// The most threads of one inference call (`[runtime] threads`, `--threads`).
pub const MAX_THREADS: usize = 256;

/// The most generations at once (`[runtime] workers`).
pub const MAX_WORKERS: usize = 64;

/// The kind of inference backend, as named in `edge.toml` (`[runtime] backend`) and on the
/// command line (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Pure Rust, always built in.
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

/// The floating-point precision tract computes in (`[runtime] precision`, `--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats, as exported.
    #[default]
    F32,
    /// 16-bit floats for the feature maps (tract's `f32_to_f16` translation after declutter):
    /// convolutions, matrix products and activations; the norms and the timestep embedding stay
    /// in f32, inputs and outputs are cast at the edges. Needs a CPU with fp16 arithmetic (ARMv8.2
    /// FEAT_FP16, `asimdhp`; Cortex-A76/A78, not Cortex-A72). tract only.
    F16,
}

impl Precision {
    /// `"f32"` or `"f16"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// The inference backend that runs a model's ONNX files, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// tract (optimized plans built once) or onnxruntime (through the `ort` crate, cargo feature
    /// `onnxruntime`; the library is loaded once per process, on the first load of a net).
    pub kind: BackendKind,
    /// Threads of one inference call (1..=[`MAX_THREADS`]): tract's matrix products and
    /// element-wise passes on a rayon pool of this many threads (one pool per count, shared by
    /// every net of the process; 1 = on the calling thread), onnxruntime's intra-op threads.
    pub threads: usize,
    /// Calls of one net that may run at the same time (generations at once). tract shares one
    /// plan and keeps a run state per concurrent call, however many; onnxruntime, whose
    /// `Session::run` is exclusive, creates this many sessions per net (each with its own copy of
    /// the weights) and a call beyond them waits for a free one.
    pub concurrency: usize,
    /// The `libonnxruntime` shared library (1.17 or newer); `None` = the `ORT_DYLIB_PATH`
    /// environment variable. A relative path is taken from the working directory. onnxruntime only.
    pub onnxruntime_library: Option<PathBuf>,
    /// The precision of tract's plans ([`Precision::F16`] is refused for onnxruntime).
    pub precision: Precision,
    /// Allow [`Precision::F16`] on a CPU without fp16 arithmetic, where tract emulates it (much
    /// slower): for the accuracy checks of `mcm-edge eval`, `verify` and `generate` only; the
    /// service refuses f16 there.
    pub emulate_f16: bool,
}

impl Default for Backend {
    /// tract on one thread, one call at a time.
    fn default() -> Self {
        Backend::tract(1)
    }
}

impl Backend {
    /// The backend of `kind` with `threads` threads per call and one call at a time; `library`
    /// applies to onnxruntime only.
    pub fn new(kind: BackendKind, library: Option<PathBuf>, threads: usize) -> Self {
        Backend { kind, threads, concurrency: 1, onnxruntime_library: library, precision: Precision::F32, emulate_f16: false }
    }

    /// tract with `threads` threads per call.
    pub fn tract(threads: usize) -> Self {
        Backend::new(BackendKind::Tract, None, threads)
    }

    /// An onnxruntime backend from `ORT_DYLIB_PATH` with `threads` intra-op threads.
    pub fn onnxruntime(threads: usize) -> Self {
        Backend::new(BackendKind::Onnxruntime, None, threads)
    }

    /// The same backend for `concurrency` calls at once (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The same backend computing in `precision`; `emulate` allows f16 on a CPU without fp16
    /// arithmetic (accuracy checks only, see [`Backend::emulate_f16`]).
    pub fn with_precision(mut self, precision: Precision, emulate: bool) -> Self {
        self.precision = precision;
        self.emulate_f16 = emulate;
        self
    }

    /// Short human text: `tract, N thread(s)` (`, f16` when so) or `onnxruntime, N thread(s)`.
    pub fn describe(&self) -> String {
        describe_run(self.kind.name(), self.threads, self.precision)
    }
}

/// `NAME, N thread(s)`, with `, f16` when `precision` is f16: how [`Backend::describe`] and
/// [`crate::runtime::Net::backend_description`] name what runs a net.
pub(crate) fn describe_run(name: &str, threads: usize, precision: Precision) -> String {
    let f16 = if precision == Precision::F16 { ", f16" } else { "" };
    format!("{name}, {}{f16}", thread_count(threads))
}

/// The cores this process may run on (its CPU affinity and cgroup quota, as
/// `std::thread::available_parallelism` reads them); 1 when they cannot be read.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `[runtime]` section of `edge.toml`: the inference backend, its threads and how many
/// generations run at once.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `"tract"` (default, built in) or `"onnxruntime"` (needs a binary built with the cargo
    /// feature `onnxruntime` and a libonnxruntime shared library, 1.17 or newer).
    pub backend: BackendKind,
    /// The libonnxruntime shared library (`libonnxruntime.so.1.x.y`), relative to the working
    /// directory; default: the `ORT_DYLIB_PATH` environment variable. onnxruntime only.
    pub onnxruntime_library: Option<PathBuf>,
    /// Threads of one generation's inference calls (1..=256), for both backends; default
    /// (`None`): the cores this process may use divided among the workers, at least 1.
    pub threads: Option<usize>,
    /// Generations that run at once (1..=64; default 1), each on its own worker thread with its
    /// own activations (plans and weights are shared): more images per second on a board with
    /// more cores than one generation keeps busy, at the memory of one generation's activations
    /// per worker.
    pub workers: usize,
    /// `"f32"` (default) or `"f16"` (tract only; refused on a CPU without fp16 arithmetic, see
    /// [`Precision::F16`]).
    pub precision: Precision,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { backend: BackendKind::Tract, onnxruntime_library: None, threads: None, workers: 1, precision: Precision::F32 }
    }
}

impl RuntimeConfig {
    /// Threads per generation: `threads`, or the available cores shared among the workers.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| (available_cores() / self.workers.max(1)).max(1))
    }

    /// The [`Backend`] these settings describe, for `workers` generations at once.
    pub fn backend(&self) -> Backend {
        Backend::new(self.backend, self.onnxruntime_library.clone(), self.threads())
            .with_concurrency(self.workers)
            .with_precision(self.precision, false)
    }
}
