//! The Python and Rust halves agree: every model directory under `models/` that has
//! `test_vectors/` (written by `mcm-train`'s exporter from the PyTorch weights) is replayed through
//! tract, and each output must match within 1e-4 (max abs diff). (`tests/onnxruntime.rs` replays
//! them through the onnxruntime backend.)

mod support;

use mcm_edge::runtime::{Backend, Models, load_segmenter};
use support::vectors::{model_dirs, replay, segmenter_outputs};

#[test]
fn tract_reproduces_pytorch_test_vectors() {
    for dir in model_dirs() {
        let models = Models::load(&dir, &Backend::Tract).unwrap();
        replay("tract", &dir, "base", &models.base, &["sample", "timestep"], &[models.info.schedule.prediction().output()]);
        if let Some(mcm) = &models.mcm {
            replay("tract", &dir, "mcm", mcm, &["sample", "eps", "cond", "timestep"], &["gamma", "beta"]);
        }
        if dir.join("test_vectors/segmenter.image.npy").exists() {
            let seg = load_segmenter(&dir, &models.info, &Backend::Tract).unwrap();
            replay("tract", &dir, "segmenter", &seg, &["image"], segmenter_outputs(&models.info));
        }
    }
}
