//! Replaying the exporter's test vectors (`models/*/test_vectors/*.npy`, written by `mcm-train`
//! from the PyTorch weights and diffusers' pipelines) through the device, whatever backend runs it.
#![allow(dead_code)] // each test file uses a part of it

use std::path::{Path, PathBuf};

use mcm_edge::diffusion::Noise;
use mcm_edge::runtime::{Backend, InputKind, InputSpec, timestep_tensor};
use mcm_edge::tools::verify::verify;
use ndarray::Array4;
use tract_onnx::prelude::*;

/// The model directories under `models/` that have `test_vectors/` (models/tiny at least).
pub fn model_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("models/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("test_vectors").is_dir() && p.join("model.toml").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.iter().any(|d| d.ends_with("tiny")), "models/tiny is the committed fixture");
    dirs
}

/// Largest absolute element difference.
pub fn max_abs_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v))
}

/// Replay every test vector of `dir` through `backend` (`mcm-edge verify`): each net, the
/// tokenizer and diffusers' pipeline runs must be within their tolerances; `label` names the
/// backend in the messages.
pub fn verify_dir(label: &str, dir: &Path, backend: &Backend) {
    let checks = verify(dir, backend).unwrap_or_else(|e| panic!("{label}: {}: {e}", dir.display()));
    assert!(!checks.is_empty(), "{}: no checks", dir.display());
    for c in &checks {
        println!("{label}: {}: {}: max abs diff {:.2e} (tolerance {:.0e})", dir.display(), c.what, c.max_abs_diff, c.tolerance);
        assert!(c.ok(), "{label}: {}: {} differs from PyTorch by {} (tolerance {})", dir.display(), c.what, c.max_abs_diff, c.tolerance);
    }
}

/// Random inputs for a net loaded with `specs` (floats from `noise`, timesteps `t`, token ids 1).
pub fn random_inputs(specs: &[InputSpec], noise: &mut Noise, t: f32) -> Vec<Tensor> {
    specs
        .iter()
        .map(|s| match s.kind {
            InputKind::Timestep => timestep_tensor(t, 1),
            InputKind::TokenIds => ndarray::ArrayD::<i64>::ones(s.shape.clone()).into_tensor(),
            InputKind::Float => {
                let n: usize = s.shape.iter().product();
                ndarray::ArrayD::from_shape_vec(s.shape.clone(), noise.randn([1, 1, 1, n]).into_raw_vec_and_offset().0).unwrap().into_tensor()
            }
        })
        .collect()
}
