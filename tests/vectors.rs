//! The Python and Rust halves agree: every model directory under `models/` that has
//! `test_vectors/` (written by `mcm-train`'s exporter from the PyTorch weights, and for a
//! contract-2 model from diffusers' own pipeline) is replayed through tract (`mcm-edge verify`):
//! each net's output within 1e-4 of its scale, the tokenizer's ids equal, and a pipeline's decoded
//! image within 1e-3. (`tests/onnxruntime.rs` replays them through the onnxruntime backend.)

mod support;

use mcm_edge::runtime::Backend;
use support::vectors::{model_dirs, verify_dir};

#[test]
fn tract_reproduces_pytorch_test_vectors() {
    for dir in model_dirs() {
        verify_dir("tract", &dir, &Backend::default());
    }
}

/// tract's multi-threaded matrix products and element-wise passes (`[runtime] threads`) give the
/// same outputs within the same tolerances.
#[test]
fn tract_on_two_threads_reproduces_them_too() {
    for dir in model_dirs() {
        verify_dir("tract, 2 threads", &dir, &Backend::tract(2));
    }
}
