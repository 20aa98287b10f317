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

/// `[runtime]` section of `edge.toml`: the inference backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `"tract"` (default, built in) or `"onnxruntime"` (needs a binary built with the cargo
    /// feature `onnxruntime` and a libonnxruntime shared library, 1.17 or newer).
    pub backend: BackendKind,
    /// The libonnxruntime shared library (`libonnxruntime.so.1.x.y`), relative to the working
    /// directory; default: the `ORT_DYLIB_PATH` environment variable. onnxruntime only.
    pub onnxruntime_library: Option<PathBuf>,
    /// Intra-op threads of each onnxruntime session (1..=256); tract always runs on one thread.
    pub threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { backend: BackendKind::Tract, onnxruntime_library: None, threads: 1 }
    }
}

impl RuntimeConfig {
    /// The [`Backend`] these settings describe.
    pub fn backend(&self) -> Backend {
        Backend::new(self.backend, self.onnxruntime_library.clone(), self.threads)
    }
}
