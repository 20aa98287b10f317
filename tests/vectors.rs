//! The Python and Rust halves agree: every model directory under `models/` that has
//! `test_vectors/` (written by `mcm-train`'s exporter from the PyTorch weights) is replayed through
//! tract, and each output must match within 1e-4 (max abs diff).

use std::path::{Path, PathBuf};

use mcm_edge::model::{Models, Net, load_segmenter};
use ndarray::{Array4, ArrayD, Ix4};
use ndarray_npy::read_npy;
use tract_onnx::prelude::*;

const TOLERANCE: f32 = 1e-4;

fn model_dirs() -> Vec<PathBuf> {
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

fn vector(dir: &Path, name: &str) -> ArrayD<f32> {
    let path = dir.join("test_vectors").join(format!("{name}.npy"));
    read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Run `net` one batch row at a time (plans are built for batch 1) and compare with `expected`.
fn replay(dir: &Path, net_name: &str, net: &Net, inputs: &[&str], outputs: &[&str]) {
    let ins: Vec<ArrayD<f32>> = inputs.iter().map(|i| vector(dir, &format!("{net_name}.{i}"))).collect();
    let batch = ins[0].shape()[0];
    for b in 0..batch {
        let row: Vec<Tensor> = ins.iter().map(|a| a.slice_axis(ndarray::Axis(0), (b..b + 1).into()).to_owned().into_tensor()).collect();
        let got = net.run(row).unwrap();
        for (o, g) in outputs.iter().zip(got) {
            let want: Array4<f32> = vector(dir, &format!("{net_name}.{o}")).into_dimensionality::<Ix4>().unwrap();
            let want = want.slice_axis(ndarray::Axis(0), (b..b + 1).into());
            let diff = (&g - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
            assert!(diff <= TOLERANCE, "{}: {net_name}.{o}[{b}] differs from PyTorch by {diff}", dir.display());
            println!("{}: {net_name}.{o}[{b}] max abs diff {diff:.2e}", dir.display());
        }
    }
}

#[test]
fn tract_reproduces_pytorch_test_vectors() {
    for dir in model_dirs() {
        let models = Models::load(&dir).unwrap();
        replay(&dir, "base", &models.base, &["sample", "timestep"], &["eps"]);
        if let Some(mcm) = &models.mcm {
            replay(&dir, "mcm", mcm, &["sample", "eps", "cond", "timestep"], &["gamma", "beta"]);
        }
        if dir.join("test_vectors/segmenter.image.npy").exists() {
            let seg = load_segmenter(&dir, &models.info).unwrap();
            replay(&dir, "segmenter", &seg, &["image"], &["logits"]);
        }
    }
}
