//! Replaying the exporter's test vectors (`models/*/test_vectors/*.npy`, written by `mcm-train`
//! from the PyTorch weights) through a loaded [`Net`], whatever backend runs it.
#![allow(dead_code)] // each test file uses a part of it

use std::path::{Path, PathBuf};

use mcm_edge::runtime::Net;
use ndarray::{Array4, ArrayD, Ix4};
use ndarray_npy::read_npy;
use tract_onnx::prelude::*;

/// Largest accepted max abs difference between a backend's output and PyTorch's.
pub const TOLERANCE: f32 = 1e-4;

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

/// `DIR/test_vectors/NAME.npy`.
pub fn vector(dir: &Path, name: &str) -> ArrayD<f32> {
    let path = dir.join("test_vectors").join(format!("{name}.npy"));
    read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute element difference.
pub fn max_abs_diff(a: &Array4<f32>, b: &Array4<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v))
}

/// Run `net` one batch row at a time (nets are loaded for batch 1) and compare with the vectors
/// `NET_NAME.OUTPUT`; `label` names the backend in the messages.
pub fn replay(label: &str, dir: &Path, net_name: &str, net: &Net, inputs: &[&str], outputs: &[&str]) {
    let ins: Vec<ArrayD<f32>> = inputs.iter().map(|i| vector(dir, &format!("{net_name}.{i}"))).collect();
    let batch = ins[0].shape()[0];
    for b in 0..batch {
        let row: Vec<Tensor> = ins.iter().map(|a| a.slice_axis(ndarray::Axis(0), (b..b + 1).into()).to_owned().into_tensor()).collect();
        let got = net.run(row).unwrap();
        for (o, g) in outputs.iter().zip(got) {
            let want: Array4<f32> = vector(dir, &format!("{net_name}.{o}")).into_dimensionality::<Ix4>().unwrap();
            let want = want.slice_axis(ndarray::Axis(0), (b..b + 1).into()).to_owned();
            let diff = max_abs_diff(&g, &want);
            assert!(diff <= TOLERANCE, "{label}: {}: {net_name}.{o}[{b}] differs from PyTorch by {diff}", dir.display());
            println!("{label}: {}: {net_name}.{o}[{b}] max abs diff {diff:.2e}", dir.display());
        }
    }
}

/// The segmenter's outputs in a model directory: `logits`, and `features` where model.toml
/// declares them (`[segmenter] features`).
pub fn segmenter_outputs(info: &mcm_edge::contract::ModelInfo) -> &'static [&'static str] {
    match info.segmenter.as_ref().and_then(|s| s.features) {
        Some(_) => &["logits", "features"],
        None => &["logits"],
    }
}
