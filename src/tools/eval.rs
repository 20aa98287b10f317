//! Evaluation through the device pipeline (README "Evaluation"): generate for held-out maps with
//! and without the MCM (same seeds) and score the outputs against the input maps.
//!
//! - mIoU: the reference segmenter (`segmenter.onnx`, trained by `mcm-train segmenter`) segments
//!   the generated image; IoU per class against the input map is accumulated over the whole set
//!   (intersection and union summed), averaged over the classes that occur.
//! - edge F1: Canny edges of the generated image vs the input sketch, a pixel matching when the
//!   other map has one within 2 pixels (Chebyshev distance); counts summed over the set.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, Luma, RgbImage};
use imageproc::distance_transform::{Norm, distance_transform};
use imageproc::edges::canny;
use ndarray::{Array2, Axis};
use serde::Serialize;
use tract_onnx::prelude::IntoTensor;

use crate::contract::{Maps, ModalityKind, ModalityMap};
use crate::diffusion::{GenerateError, GenerationParams, ImageGenerator, LoadError, Pipeline, from_image};
use crate::frames::{FrameLimits, decode_frame};
use crate::runtime::{Backend, ModelError, Net, load_segmenter};

/// Canny hysteresis thresholds on the Sobel magnitude of the 0-255 luma (imageproc scale, max ~1140).
pub const CANNY_LOW: f32 = 40.0;
pub const CANNY_HIGH: f32 = 100.0;
/// Edge match tolerance in pixels.
pub const EDGE_TOLERANCE: u8 = 2;

/// Errors of an evaluation run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// Settings of `mcm-edge eval`.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// At most this many examples (sorted by file name).
    pub limit: usize,
    pub steps: usize,
    pub strength: f32,
    /// Example i uses seed `seed + i` for every variant.
    pub seed: u64,
}

/// The JSON written by `mcm-edge eval`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub n: usize,
    pub steps: usize,
    pub strength: f32,
    /// mIoU of the segmenter on generated images, conditioned on the segmentation alone.
    pub miou_mcm: f64,
    /// ... conditioned on segmentation and sketch together.
    pub miou_mcm_both: f64,
    /// ... from the base alone (strength 0), same seeds.
    pub miou_base: f64,
    /// The segmenter's own mIoU on the real held-out images.
    pub miou_ceiling: f64,
    /// Edge F1 of generated images conditioned on the sketch alone.
    pub edge_f1_mcm: f64,
    pub edge_f1_mcm_both: f64,
    pub edge_f1_base: f64,
    /// Edge F1 of the real images against their own sketches.
    pub edge_f1_ceiling: f64,
    pub seconds: f64,
}

/// Per-class intersection / union counts.
#[derive(Debug, Clone, Default)]
pub struct IouCounts {
    inter: Vec<u64>,
    union: Vec<u64>,
}

impl IouCounts {
    /// Empty counts for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { inter: vec![0; classes], union: vec![0; classes] }
    }

    /// Add one prediction / truth pair of class-id maps `[H, W]` (ids < classes).
    pub fn add(&mut self, pred: &Array2<u8>, truth: &Array2<u8>) {
        for (&p, &t) in pred.iter().zip(truth.iter()) {
            let (p, t) = (p as usize, t as usize);
            if p == t {
                self.inter[p] += 1;
                self.union[p] += 1;
            } else {
                self.union[p] += 1;
                self.union[t] += 1;
            }
        }
    }

    /// Mean IoU over the classes with a non-empty union (0 when none).
    pub fn miou(&self) -> f64 {
        let ious: Vec<f64> =
            self.inter.iter().zip(&self.union).filter(|(_, u)| **u > 0).map(|(i, u)| *i as f64 / *u as f64).collect();
        if ious.is_empty() { 0.0 } else { ious.iter().sum::<f64>() / ious.len() as f64 }
    }
}

/// Edge match counts for precision / recall.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeCounts {
    pred: u64,
    pred_matched: u64,
    truth: u64,
    truth_matched: u64,
}

impl EdgeCounts {
    /// Add one pair of binary edge maps (non-zero = edge), same size.
    pub fn add(&mut self, pred: &GrayImage, truth: &GrayImage) {
        let near = |map: &GrayImage| distance_transform(map, Norm::LInf);
        let (d_truth, d_pred) = (near(truth), near(pred));
        for (p, (t, (dt, dp))) in pred.pixels().zip(truth.pixels().zip(d_truth.pixels().zip(d_pred.pixels()))) {
            if p[0] > 0 {
                self.pred += 1;
                self.pred_matched += u64::from(dt[0] <= EDGE_TOLERANCE);
            }
            if t[0] > 0 {
                self.truth += 1;
                self.truth_matched += u64::from(dp[0] <= EDGE_TOLERANCE);
            }
        }
    }

    /// F1 of precision and recall (0 when either is 0).
    pub fn f1(&self) -> f64 {
        let p = if self.pred > 0 { self.pred_matched as f64 / self.pred as f64 } else { 0.0 };
        let r = if self.truth > 0 { self.truth_matched as f64 / self.truth as f64 } else { 0.0 };
        if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 }
    }
}

/// Canny edges (imageproc, thresholds [`CANNY_LOW`], [`CANNY_HIGH`]) of an RGB image's luma.
pub fn edges_of(img: &RgbImage) -> GrayImage {
    canny(&image::DynamicImage::ImageRgb8(img.clone()).to_luma8(), CANNY_LOW, CANNY_HIGH)
}

/// A stroke map `[H, W]` in [0, 1] as a binary edge image (stroke > 0.5).
pub fn strokes_to_edges(strokes: &Array2<f32>) -> GrayImage {
    let (h, w) = strokes.dim();
    GrayImage::from_fn(w as u32, h as u32, |x, y| Luma([if strokes[[y as usize, x as usize]] > 0.5 { 255 } else { 0 }]))
}

/// Class ids `[H, W]` predicted by the segmenter for an RGB image.
///
/// # Errors
/// Inference failure.
pub fn segment(segmenter: &Net, img: &RgbImage, range: [f32; 2]) -> Result<Array2<u8>, EvalError> {
    let logits = segmenter.run(vec![from_image(img, range).into_tensor()])?.remove(0);
    let logits = logits.index_axis(Axis(0), 0);
    let (_, h, w) = logits.dim();
    Ok(Array2::from_shape_fn((h, w), |(y, x)| {
        let col = logits.slice(ndarray::s![.., y, x]);
        col.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u8
    }))
}

/// One held-out example: the real image and its maps, decoded through the device's frame decoder.
struct Example {
    image: RgbImage,
    segmentation: Array2<u8>,
    sketch: Array2<f32>,
}

fn load_examples(data: &Path, generator: &Pipeline, limit: usize) -> Result<Vec<Example>, EvalError> {
    let info = generator.info();
    let size = info.image.size;
    let by_kind = |kind| info.modalities.iter().find(|m| m.kind == kind);
    let (seg, sk) = match (by_kind(ModalityKind::Segmentation), by_kind(ModalityKind::Sketch)) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(EvalError::Data {
                path: generator.models().dir.join("model.toml"),
                message: "eval needs a model with a segmentation and a sketch modality".into(),
            });
        }
    };
    let images = data.join("images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| EvalError::Data { path: images.clone(), message: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    names.sort();
    names.truncate(limit);
    let limits = FrameLimits::default();
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| EvalError::Data { path: p.clone(), message: e.to_string() });
    let decode = |dir: &str, name: &Path, m| -> Result<ModalityMap, EvalError> {
        let p = data.join(dir).join(name.file_name().unwrap_or_default());
        decode_frame(&read(p.clone())?, m, size, &limits).map_err(|e| EvalError::Data { path: p, message: e.to_string() })
    };
    names
        .iter()
        .map(|p| {
            let image = image::load_from_memory(&read(p.clone())?)
                .map_err(|e| EvalError::Data { path: p.clone(), message: e.to_string() })?
                .resize_exact(size as u32, size as u32, image::imageops::FilterType::Triangle)
                .to_rgb8();
            let (ModalityMap::Segmentation(segmentation), ModalityMap::Sketch(sketch)) =
                (decode("segmentation", p, seg)?, decode("sketch", p, sk)?)
            else {
                unreachable!("decode_frame returns the modality's kind")
            };
            Ok(Example { image, segmentation, sketch })
        })
        .collect()
}

/// Run the evaluation of `model_dir` on the dataset folder `data` (images/, segmentation/, sketch/)
/// with the nets (base, MCM, segmenter) run by `backend`.
///
/// # Errors
/// Missing files, a model without segmenter or modalities, inference failures, and
/// [`ModelError::Backend`] when the backend cannot be used.
pub fn evaluate(model_dir: &Path, data: &Path, opts: &EvalOptions, backend: &Backend) -> Result<EvalReport, EvalError> {
    let start = Instant::now();
    let generator = Pipeline::load(model_dir, backend)?;
    let info = generator.info().clone();
    let segmenter = load_segmenter(model_dir, &info, backend)?;
    let examples = load_examples(data, &generator, opts.limit)?;
    if examples.is_empty() {
        return Err(EvalError::Data { path: data.join("images"), message: "no PNG images".into() });
    }
    let classes = info.modalities.iter().find(|m| m.kind == ModalityKind::Segmentation).map_or(0, |m| m.channels);
    let seg_name = info.modalities.iter().find(|m| m.kind == ModalityKind::Segmentation).map(|m| m.name.clone()).unwrap_or_default();
    let sk_name = info.modalities.iter().find(|m| m.kind == ModalityKind::Sketch).map(|m| m.name.clone()).unwrap_or_default();
    let range = info.image.value_range;
    // Scored images per example, in this order: base alone, MCM with the segmentation, with the
    // sketch, with both, and the real image (the ceilings).
    const BASE: usize = 0;
    const SEG: usize = 1;
    const SKETCH: usize = 2;
    const BOTH: usize = 3;
    const REAL: usize = 4;
    let mut ious = vec![IouCounts::new(classes); 5];
    let mut edges = [EdgeCounts::default(); 5];
    for (i, ex) in examples.iter().enumerate() {
        let params = |strength| GenerationParams { seed: opts.seed + i as u64, steps: opts.steps, strength, eta: 0.0 };
        let seg_map = (seg_name.clone(), ModalityMap::Segmentation(ex.segmentation.clone()));
        let sk_map = (sk_name.clone(), ModalityMap::Sketch(ex.sketch.clone()));
        let both: Maps = [seg_map.clone(), sk_map.clone()].into();
        let images = [
            generator.generate(&both, &params(0.0))?,
            generator.generate(&[seg_map].into(), &params(opts.strength))?,
            generator.generate(&[sk_map].into(), &params(opts.strength))?,
            generator.generate(&both, &params(opts.strength))?,
            ex.image.clone(),
        ];
        let truth_edges = strokes_to_edges(&ex.sketch);
        for (k, img) in images.iter().enumerate() {
            ious[k].add(&segment(&segmenter, img, range)?, &ex.segmentation);
            edges[k].add(&edges_of(img), &truth_edges);
        }
        log::info!("eval {}/{}", i + 1, examples.len());
    }
    Ok(EvalReport {
        n: examples.len(),
        steps: opts.steps,
        strength: opts.strength,
        miou_mcm: ious[SEG].miou(),
        miou_mcm_both: ious[BOTH].miou(),
        miou_base: ious[BASE].miou(),
        miou_ceiling: ious[REAL].miou(),
        edge_f1_mcm: edges[SKETCH].f1(),
        edge_f1_mcm_both: edges[BOTH].f1(),
        edge_f1_base: edges[BASE].f1(),
        edge_f1_ceiling: edges[REAL].f1(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miou_of_perfect_and_half_predictions() {
        let truth = Array2::from_shape_fn((4, 4), |(_, x)| (x / 2) as u8);
        let mut c = IouCounts::new(3);
        c.add(&truth, &truth);
        assert_eq!(c.miou(), 1.0);
        let pred = Array2::zeros((4, 4));
        let mut c = IouCounts::new(3);
        c.add(&pred, &truth);
        // class 0: inter 8, union 16 -> 0.5; class 1: inter 0, union 8 -> 0; class 2 absent.
        assert!((c.miou() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn edge_f1_tolerates_two_pixels_only() {
        let line = |x0: u32| GrayImage::from_fn(16, 16, |x, _| Luma([if x == x0 { 255 } else { 0 }]));
        let mut near = EdgeCounts::default();
        near.add(&line(7), &line(5));
        assert_eq!(near.f1(), 1.0);
        let mut far = EdgeCounts::default();
        far.add(&line(8), &line(5));
        assert_eq!(far.f1(), 0.0);
        let mut none = EdgeCounts::default();
        none.add(&GrayImage::new(16, 16), &line(5));
        assert_eq!(none.f1(), 0.0);
    }

    #[test]
    fn canny_finds_a_step_edge() {
        let img = RgbImage::from_fn(32, 32, |x, _| if x < 16 { image::Rgb([20, 20, 20]) } else { image::Rgb([220, 220, 220]) });
        let e = edges_of(&img);
        let cols: Vec<u32> = e.enumerate_pixels().filter(|p| p.2[0] > 0).map(|p| p.0).collect();
        assert!(!cols.is_empty() && cols.iter().all(|c| (14..=17).contains(c)), "{cols:?}");
    }
}
