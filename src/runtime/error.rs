//! [`ModelError`]: why a model directory could not be loaded or a net could not run.

use std::path::PathBuf;

use super::checks::ContractMismatch;
use crate::contract::ModelTomlError;

/// Errors reading, checking or running the nets of a model directory; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `model.toml` is unreadable or breaks the contract.
    #[error(transparent)]
    ModelToml(#[from] ModelTomlError),
    /// An ONNX file is missing or unreadable.
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An ONNX file (or `model.toml`, `path`) disagrees with the contract.
    #[error("{path}: {source}")]
    Contract { path: PathBuf, source: ContractMismatch },
    /// tract could not load, optimize or run the ONNX file at `path`.
    #[error("{path}: tract failed: {message}")]
    Tract { path: PathBuf, message: String },
    /// onnxruntime could not load, optimize or run the ONNX file at `path`.
    #[error("{path}: onnxruntime failed: {message}")]
    Onnxruntime { path: PathBuf, message: String },
    /// `tokenizer.json` could not be loaded, or failed on a prompt.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// The model's weights do not fit in this device's memory (`detail`: each net's size and the
    /// total; `limit`: the memory and where it comes from); checked before loading.
    #[error("{dir}: the model does not fit in memory: its weights take {detail}, this device has {limit}")]
    TooLarge { dir: PathBuf, detail: String, limit: String },
    /// The chosen inference backend cannot be used: this binary was built without it, or its
    /// shared library is missing or cannot be loaded (the message names the library path).
    #[error("{0}")]
    Backend(String),
}
