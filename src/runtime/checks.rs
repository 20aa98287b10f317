//! The contract checks that every backend makes on a loaded ONNX file (input and output names,
//! declared input dims), and the thread-count text both describe themselves with.

/// An ONNX file that disagrees with the contract (README "Model contract") or with `model.toml`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractMismatch {
    /// The file's input or output names (`what`: "inputs" / "outputs") or their order differ.
    #[error("{what} are {got:?}, the contract needs {want:?}")]
    Names { what: &'static str, got: Vec<String>, want: Vec<String> },
    /// An input's declared dims differ from the shape `model.toml` needs (batch first).
    #[error("input {name:?} is declared {declared:?}, model.toml needs [batch, {}]", dims_after_batch(.shape))]
    InputDims { name: String, declared: Vec<String>, shape: Vec<usize> },
    /// An input is not a tensor (onnxruntime's view of the file).
    #[error("input {name:?} is not a tensor")]
    NotATensor { name: String },
    /// An input's element type is not one the contract feeds it with (`ty`, `accepted` as tract
    /// names them; e.g. a float16 export: export in float32).
    #[error("input {name:?} is {ty}, the device feeds it as {accepted}")]
    ElementType { name: String, ty: String, accepted: String },
    /// `model.toml` has no `[latent] encoder`.
    #[error("no [latent] encoder: export the model with `mcm-train export-diffusers`, which writes encoder.onnx")]
    NoEncoder,
    /// `model.toml` has no `[segmenter]` section.
    #[error("no [segmenter] section: train one with `mcm-train segmenter`")]
    NoSegmenter,
    /// `model.toml` has no `[estimators.NAME]` section for the dense modality `name`.
    #[error("no [estimators.{name}] section: train one with `mcm-train estimator --modality {name}`")]
    NoEstimator { name: String },
}

/// `D1, D2, ...`: the dims of `shape` after the batch axis.
fn dims_after_batch(shape: &[usize]) -> String {
    shape.iter().skip(1).map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

/// `1 thread` or `N threads`.
pub(crate) fn thread_count(threads: usize) -> String {
    format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
}

/// Check that a file's output names are the contract's `want`, in order (`what`: "outputs").
pub(crate) fn check_names(what: &'static str, got: &[String], want: &[&str]) -> Result<(), ContractMismatch> {
    if got == want {
        Ok(())
    } else {
        Err(ContractMismatch::Names { what, got: got.to_vec(), want: want.iter().map(|w| w.to_string()).collect() })
    }
}
