//! Evaluation through the device pipeline (README "Evaluation"): generate for held-out maps with
//! and without the MCM (same seeds) and score the outputs against the input maps.
//!
//! - mIoU: the reference segmenter (`segmenter.onnx`, trained by `mcm-train segmenter`) segments
//!   the generated image; IoU per class against the input map is accumulated over the whole set
//!   (intersection and union summed), averaged over the classes that occur.
//! - edge F1: Canny edges of the generated image vs the input sketch, a pixel matching when the
//!   other map has one within 2 pixels (Chebyshev distance); counts summed over the set.
//! - dense alignment (each dense modality with a reference estimator, `[estimators.NAME]`, e.g.
//!   depth): the estimator reads the generated image back into a map, compared with the input
//!   map by RMSE (pooled over all pixels, in the modality's value-range units: how far the
//!   image's implied depth is from the asked one) and by Pearson correlation per image, averaged
//!   (whether near and far are ordered as asked, whatever the offset and scale). Both, because
//!   an image can put every layer in the right order at the wrong distances, or the reverse.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, Luma, RgbImage};
use imageproc::distance_transform::{Norm, distance_transform};
use imageproc::edges::canny;
use ndarray::{Array2, Array3, ArrayView3, Axis};
use serde::Serialize;
use tract_onnx::prelude::IntoTensor;

use crate::contract::{Maps, ModalityKind, ModalityMap};
use crate::diffusion::{GenerateError, GenerationParams, ImageGenerator, LoadError, Pipeline, from_image};
use crate::frames::{FrameLimits, decode_frame};
use crate::runtime::{Backend, ModelError, Net, load_estimator, load_segmenter};

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
    /// mIoU conditioned on every modality scored (segmentation, sketch and each dense modality
    /// with an estimator); present when there is more than segmentation and sketch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_mcm_all: Option<f64>,
    /// Edge F1 conditioned on every modality scored (see `miou_mcm_all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_mcm_all: Option<f64>,
    /// Alignment with each dense modality that has a reference estimator, by modality name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub dense: BTreeMap<String, DenseScores>,
    pub seconds: f64,
}

/// Alignment of generated images with one dense modality (module doc): RMSE in the modality's
/// value-range units (lower is better) and mean per-image Pearson correlation in [-1, 1].
#[derive(Debug, Clone, Serialize)]
pub struct DenseScores {
    /// Conditioned on this modality alone.
    pub rmse_mcm: f64,
    /// Conditioned on every modality scored.
    pub rmse_mcm_all: f64,
    /// The base alone (strength 0), same seeds.
    pub rmse_base: f64,
    /// The estimator on the real held-out images.
    pub rmse_ceiling: f64,
    pub corr_mcm: f64,
    pub corr_mcm_all: f64,
    pub corr_base: f64,
    pub corr_ceiling: f64,
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

/// Squared errors and per-image correlations of estimated vs input dense maps.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseCounts {
    sq_err: f64,
    values: u64,
    corr_sum: f64,
    images: u64,
}

impl DenseCounts {
    /// Add one estimate / input pair of maps `[C, H, W]`, same shape. An image where either map
    /// is constant has no defined correlation and counts as 0.
    pub fn add(&mut self, pred: ArrayView3<f32>, truth: ArrayView3<f32>) {
        let n = truth.len() as f64;
        let (mp, mt) = (pred.iter().map(|&v| f64::from(v)).sum::<f64>() / n, truth.iter().map(|&v| f64::from(v)).sum::<f64>() / n);
        let (mut cov, mut vp, mut vt) = (0.0, 0.0, 0.0);
        for (&p, &t) in pred.iter().zip(truth.iter()) {
            let (dp, dt) = (f64::from(p) - mp, f64::from(t) - mt);
            cov += dp * dt;
            vp += dp * dp;
            vt += dt * dt;
            self.sq_err += (f64::from(p) - f64::from(t)).powi(2);
        }
        self.values += truth.len() as u64;
        self.corr_sum += if vp > 0.0 && vt > 0.0 { cov / (vp * vt).sqrt() } else { 0.0 };
        self.images += 1;
    }

    /// Root mean squared error over every value added (0 when none).
    pub fn rmse(&self) -> f64 {
        if self.values > 0 { (self.sq_err / self.values as f64).sqrt() } else { 0.0 }
    }

    /// Mean per-image Pearson correlation (0 when none).
    pub fn corr(&self) -> f64 {
        if self.images > 0 { self.corr_sum / self.images as f64 } else { 0.0 }
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

/// A map `[C, H, W]` estimated from an RGB image by a dense modality's reference estimator.
///
/// # Errors
/// Inference failure.
pub fn estimate(estimator: &Net, img: &RgbImage, range: [f32; 2]) -> Result<Array3<f32>, EvalError> {
    Ok(estimator.run(vec![from_image(img, range).into_tensor()])?.remove(0).index_axis_move(Axis(0), 0))
}

/// One held-out example: the real image and its maps, decoded through the device's frame decoder.
struct Example {
    image: RgbImage,
    segmentation: Array2<u8>,
    sketch: Array2<f32>,
    /// One map `[C, H, W]` per scored dense modality, in [`Scored::dense`] order.
    dense: Vec<Array3<f32>>,
}

/// The modalities an evaluation scores: the segmentation, the sketch and each dense modality
/// with a reference estimator (name, estimator).
struct Scored {
    segmentation: String,
    sketch: String,
    dense: Vec<(String, Net)>,
}

impl Scored {
    /// # Errors
    /// The model lacks a segmentation or a sketch modality; an estimator fails to load.
    fn of(generator: &Pipeline, backend: &Backend) -> Result<Self, EvalError> {
        let (info, dir) = (generator.info(), &generator.models().dir);
        let by_kind = |kind| info.modalities.iter().find(|m| m.kind == kind).map(|m| m.name.clone());
        let (Some(segmentation), Some(sketch)) = (by_kind(ModalityKind::Segmentation), by_kind(ModalityKind::Sketch)) else {
            return Err(EvalError::Data {
                path: dir.join("model.toml"),
                message: "eval needs a model with a segmentation and a sketch modality".into(),
            });
        };
        let mut dense = Vec::new();
        for m in info.modalities.iter().filter(|m| m.kind == ModalityKind::Dense) {
            if info.estimators.contains_key(&m.name) {
                dense.push((m.name.clone(), load_estimator(dir, info, &m.name, backend)?));
            } else {
                log::warn!("{}: no [estimators.{}]: the {} alignment is not scored", dir.display(), m.name, m.name);
            }
        }
        Ok(Self { segmentation, sketch, dense })
    }
}

fn load_examples(data: &Path, generator: &Pipeline, scored: &Scored, limit: usize) -> Result<Vec<Example>, EvalError> {
    let info = generator.info();
    let size = info.image.size;
    let modality = |name: &str| info.modality(name).expect("Scored names the model's modalities");
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
    let decode = |dir: &str, name: &Path| -> Result<ModalityMap, EvalError> {
        let p = data.join(dir).join(name.file_name().unwrap_or_default());
        decode_frame(&read(p.clone())?, modality(dir), size, &limits).map_err(|e| EvalError::Data { path: p, message: e.to_string() })
    };
    names
        .iter()
        .map(|p| {
            let image = image::load_from_memory(&read(p.clone())?)
                .map_err(|e| EvalError::Data { path: p.clone(), message: e.to_string() })?
                .resize_exact(size as u32, size as u32, image::imageops::FilterType::Triangle)
                .to_rgb8();
            let (ModalityMap::Segmentation(segmentation), ModalityMap::Sketch(sketch)) =
                (decode(&scored.segmentation, p)?, decode(&scored.sketch, p)?)
            else {
                unreachable!("decode_frame returns the modality's kind")
            };
            let dense = scored
                .dense
                .iter()
                .map(|(name, _)| match decode(name, p)? {
                    ModalityMap::Dense(map) => Ok(map),
                    _ => unreachable!("decode_frame returns the modality's kind"),
                })
                .collect::<Result<_, EvalError>>()?;
            Ok(Example { image, segmentation, sketch, dense })
        })
        .collect()
}

/// Run the evaluation of `model_dir` on the dataset folder `data` (images/ and one folder per
/// scored modality: segmentation/, sketch/, and e.g. depth/ when the model has `[estimators.depth]`)
/// with the nets (base, MCM, segmenter, estimators) run by `backend`.
///
/// # Errors
/// Missing files, a model without segmenter or modalities, inference failures, and
/// [`ModelError::Backend`] when the backend cannot be used.
pub fn evaluate(model_dir: &Path, data: &Path, opts: &EvalOptions, backend: &Backend) -> Result<EvalReport, EvalError> {
    let start = Instant::now();
    let generator = Pipeline::load(model_dir, backend)?;
    let info = generator.info().clone();
    let segmenter = load_segmenter(model_dir, &info, backend)?;
    let scored = Scored::of(&generator, backend)?;
    let examples = load_examples(data, &generator, &scored, opts.limit)?;
    if examples.is_empty() {
        return Err(EvalError::Data { path: data.join("images"), message: "no PNG images".into() });
    }
    let classes = info.modality(&scored.segmentation).map_or(0, |m| m.channels);
    let range = info.image.value_range;
    // Scored images per example, in this order: base alone, MCM with the segmentation, with the
    // sketch, with both, the real image (the ceilings), then with everything scored (when there is
    // more than segmentation and sketch) and with each dense modality alone.
    const BASE: usize = 0;
    const SEG: usize = 1;
    const SKETCH: usize = 2;
    const BOTH: usize = 3;
    const REAL: usize = 4;
    const ALL: usize = 5;
    let has_all = !scored.dense.is_empty();
    let dense_alone = |j: usize| ALL + usize::from(has_all) + j;
    let variants = dense_alone(scored.dense.len());
    let mut ious = vec![IouCounts::new(classes); variants];
    let mut edges = vec![EdgeCounts::default(); variants];
    let mut dense = vec![vec![DenseCounts::default(); variants]; scored.dense.len()];
    for (i, ex) in examples.iter().enumerate() {
        let params = |strength| GenerationParams { seed: opts.seed + i as u64, steps: opts.steps, strength, eta: 0.0 };
        let seg_map = (scored.segmentation.clone(), ModalityMap::Segmentation(ex.segmentation.clone()));
        let sk_map = (scored.sketch.clone(), ModalityMap::Sketch(ex.sketch.clone()));
        let dense_maps: Vec<_> =
            scored.dense.iter().zip(&ex.dense).map(|((name, _), map)| (name.clone(), ModalityMap::Dense(map.clone()))).collect();
        let both: Maps = [seg_map.clone(), sk_map.clone()].into();
        let all: Maps = both.clone().into_iter().chain(dense_maps.iter().cloned()).collect();
        let mut images = vec![
            generator.generate(&all, &params(0.0))?,
            generator.generate(&[seg_map].into(), &params(opts.strength))?,
            generator.generate(&[sk_map].into(), &params(opts.strength))?,
            generator.generate(&both, &params(opts.strength))?,
            ex.image.clone(),
        ];
        if has_all {
            images.push(generator.generate(&all, &params(opts.strength))?);
        }
        for map in &dense_maps {
            images.push(generator.generate(&[map.clone()].into(), &params(opts.strength))?);
        }
        let truth_edges = strokes_to_edges(&ex.sketch);
        for (k, img) in images.iter().enumerate() {
            ious[k].add(&segment(&segmenter, img, range)?, &ex.segmentation);
            edges[k].add(&edges_of(img), &truth_edges);
            for (j, (_, estimator)) in scored.dense.iter().enumerate() {
                dense[j][k].add(estimate(estimator, img, range)?.view(), ex.dense[j].view());
            }
        }
        log::info!("eval {}/{}", i + 1, examples.len());
    }
    let dense = scored
        .dense
        .iter()
        .zip(&dense)
        .enumerate()
        .map(|(j, ((name, _), c))| {
            let scores = DenseScores {
                rmse_mcm: c[dense_alone(j)].rmse(),
                rmse_mcm_all: c[ALL].rmse(),
                rmse_base: c[BASE].rmse(),
                rmse_ceiling: c[REAL].rmse(),
                corr_mcm: c[dense_alone(j)].corr(),
                corr_mcm_all: c[ALL].corr(),
                corr_base: c[BASE].corr(),
                corr_ceiling: c[REAL].corr(),
            };
            (name.clone(), scores)
        })
        .collect();
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
        miou_mcm_all: has_all.then(|| ious[ALL].miou()),
        edge_f1_mcm_all: has_all.then(|| edges[ALL].f1()),
        dense,
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
    fn dense_rmse_and_correlation() {
        let truth = Array3::from_shape_fn((1, 4, 4), |(_, y, _)| y as f32 / 3.0);
        let mut same = DenseCounts::default();
        same.add(truth.view(), truth.view());
        assert_eq!((same.rmse(), same.corr()), (0.0, 1.0));
        // Half the values, reversed order: correlation -1 whatever the scale; RMSE of the difference.
        let reversed = truth.mapv(|v| 0.5 * (1.0 - v));
        let mut c = DenseCounts::default();
        c.add(reversed.view(), truth.view());
        assert!((c.corr() + 1.0).abs() < 1e-9, "{c:?}");
        let want = (truth.iter().zip(reversed.iter()).map(|(t, r)| f64::from(t - r).powi(2)).sum::<f64>() / 16.0).sqrt();
        assert!((c.rmse() - want).abs() < 1e-6);
        // A flat estimate has no correlation: counted as 0, averaged with the perfect image.
        c = DenseCounts::default();
        c.add(Array3::zeros((1, 4, 4)).view(), truth.view());
        c.add(truth.view(), truth.view());
        assert!((c.corr() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn canny_finds_a_step_edge() {
        let img = RgbImage::from_fn(32, 32, |x, _| if x < 16 { image::Rgb([20, 20, 20]) } else { image::Rgb([220, 220, 220]) });
        let e = edges_of(&img);
        let cols: Vec<u32> = e.enumerate_pixels().filter(|p| p.2[0] > 0).map(|p| p.0).collect();
        assert!(!cols.is_empty() && cols.iter().all(|c| (14..=17).contains(c)), "{cols:?}");
    }
}
