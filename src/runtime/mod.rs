//! Inference runtimes: the ONNX files of a model directory loaded once for batch 1 by the chosen
//! [`Backend`] (tract by default; onnxruntime with the cargo feature `onnxruntime`) and checked
//! against `model.toml` (a mismatch names the file, the tensor and the shapes: [`ModelError`]).

mod backend;
mod checks;
mod error;
mod feed;
mod group_norm;
mod memory;
mod models;
mod net;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;
mod text;
mod tract;

pub use tract::has_fp16;

pub use backend::{Backend, BackendKind, MAX_THREADS, MAX_WORKERS, NO_ONNXRUNTIME, ONNXRUNTIME_BUILT_IN, Precision, RuntimeConfig, available_cores};
pub use checks::ContractMismatch;
pub use error::ModelError;
pub use models::{Models, base_inputs, decoder_inputs, load_encoder, load_estimator, load_segmenter, mcm_inputs};
pub use feed::{InputKind, InputSpec, timestep_tensor};
pub use memory::{Memory, weights_bytes};
pub use net::{Net, OpTime, estimate_flops};
pub use text::TextEncoder;
