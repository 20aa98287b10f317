//! The trainer and the device compute the same things: for every model under `models/`, the
//! parity vectors `mcm-train` writes (`train/mcm_train/export/parity.py`) are replayed here:
//! - `schedule.alpha_bar.npy` (f64, computed by PyTorch) against [`Schedule`];
//! - `frames/*.png` fixture frames (every modality, in the encodings users send) decoded by the
//!   device's [`decode_frame`] against the maps the trainer read from them (`frames/*.npy`):
//!   class ids equal, stroke and dense values within the index's tolerance;
//! - `cond.all.npy` / `cond.first.npy` against [`build_cond`] on the decoded first frames.

mod support;

use std::path::Path;

use mcm_edge::contract::{Maps, ModalityKind, ModalityMap, ModelInfo, build_cond};
use mcm_edge::diffusion::Schedule;
use mcm_edge::frames::{FrameLimits, decode_frame};
use ndarray::{Array1, Array4, ArrayD};
use ndarray_npy::read_npy;
use serde::Deserialize;
use support::vectors::model_dirs;

/// One entry of `test_vectors/frames/index.json`.
#[derive(Deserialize)]
struct Case {
    modality: String,
    case: String,
    frame: String,
    map: String,
    tolerance: f32,
}

fn npy<T: ndarray_npy::ReadableElement, D: ndarray::Dimension>(dir: &Path, name: &str) -> ndarray::Array<T, D> {
    let path = dir.join("test_vectors").join(name);
    read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases(dir: &Path) -> Vec<Case> {
    let path = dir.join("test_vectors/frames/index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run mcm-train export-vectors)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A decoded map as the trainer stores it: ids [H, W] (as f32), strokes [1, H, W], dense [C, H, W].
fn as_array(map: &ModalityMap) -> ArrayD<f32> {
    match map {
        ModalityMap::Segmentation(ids) => ids.mapv(f32::from).into_dyn(),
        ModalityMap::Sketch(s) => s.clone().insert_axis(ndarray::Axis(0)).into_dyn(),
        ModalityMap::Dense(d) => d.clone().into_dyn(),
    }
}

fn trainer_map(dir: &Path, case: &Case, kind: ModalityKind) -> ArrayD<f32> {
    let name = format!("frames/{}", case.map);
    if kind == ModalityKind::Segmentation {
        npy::<u8, ndarray::Ix2>(dir, &name).mapv(f32::from).into_dyn()
    } else {
        npy::<f32, ndarray::IxDyn>(dir, &name)
    }
}

#[test]
fn alpha_bar_matches_the_trainer_in_f64() {
    for dir in model_dirs() {
        let info = ModelInfo::load(&dir).unwrap();
        let want: Array1<f64> = npy(&dir, "schedule.alpha_bar.npy");
        let got = Schedule::new(&info.schedule, info.format).unwrap().alpha_bar;
        assert_eq!(got.len(), want.len(), "{}", dir.display());
        let diff = got.iter().zip(want.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-12, "{}: alpha_bar differs by {diff}", dir.display());
    }
}

#[test]
fn frames_decode_to_the_maps_the_trainer_reads() {
    for dir in model_dirs() {
        let info = ModelInfo::load(&dir).unwrap();
        let cases = cases(&dir);
        for m in &info.modalities {
            assert!(cases.iter().any(|c| c.modality == m.name), "{}: no fixture frame for {}", dir.display(), m.name);
        }
        for case in &cases {
            let m = info.modality(&case.modality).unwrap();
            let bytes = std::fs::read(dir.join("test_vectors/frames").join(&case.frame)).unwrap();
            let got = decode_frame(&bytes, m, info.image.size, &FrameLimits::default())
                .unwrap_or_else(|e| panic!("{}: {}: {e}", dir.display(), case.frame));
            let want = trainer_map(&dir, case, m.kind);
            let diff = max_diff(&as_array(&got), &want);
            assert!(diff <= case.tolerance, "{}: {} ({}): device and trainer differ by {diff}", dir.display(), case.frame, case.case);
            println!("{}: {:<32} max abs diff {diff:.1e}", dir.display(), case.frame);
        }
    }
}

#[test]
fn cond_layout_matches_the_trainer() {
    for dir in model_dirs() {
        let info = ModelInfo::load(&dir).unwrap();
        let cases = cases(&dir);
        let mut maps = Maps::new();
        for m in &info.modalities {
            let first = cases.iter().find(|c| c.modality == m.name).unwrap();
            let bytes = std::fs::read(dir.join("test_vectors/frames").join(&first.frame)).unwrap();
            maps.insert(m.name.clone(), decode_frame(&bytes, m, info.image.size, &FrameLimits::default()).unwrap());
        }
        let all: Array4<f32> = npy(&dir, "cond.all.npy");
        let got = build_cond(&info, &maps).unwrap();
        assert!(max_diff(&got.clone().into_dyn(), &all.into_dyn()) <= 1e-4, "{}: cond.all", dir.display());
        let first_name = info.modalities[0].name.clone();
        let only_first: Maps = maps.into_iter().filter(|(n, _)| *n == first_name).collect();
        let want: Array4<f32> = npy(&dir, "cond.first.npy");
        assert!(max_diff(&build_cond(&info, &only_first).unwrap().into_dyn(), &want.into_dyn()) <= 1e-4, "{}: cond.first", dir.display());
    }
}

