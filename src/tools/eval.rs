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
//! - fsd (realism, with a segmenter that has `features`): a Frechet distance between diagonal
//!   Gaussians fitted to the segmenter's pooled features of real and of generated images
//!   ([`super::fsd`]); alignment
//!   alone cannot see images that follow the map but look like no real image (what too few
//!   sampling steps do).

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
use crate::diffusion::{GenerateError, GenerationParams, ImageGenerator, LoadError, Pipeline, TextParams, from_image};
use crate::frames::{FrameLimits, decode_frame};
use crate::runtime::{Backend, ModelError, Net, Precision, load_estimator, load_segmenter};

use super::fsd;

/// Canny hysteresis thresholds on the Sobel magnitude of the 0-255 luma (imageproc scale, max ~1140).
pub const CANNY_LOW: f32 = 40.0;
pub const CANNY_HIGH: f32 = 100.0;
/// Edge match tolerance in pixels.
pub const EDGE_TOLERANCE: u8 = 2;
/// Most real images in the reference set of fsd (only the segmenter runs on them).
pub const FSD_REFERENCE: usize = 1024;

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

/// The JSON written by `mcm-edge eval`. A figure is absent (`None`, left out of the JSON) when
/// the model has no such modality or no reference net to judge it, and `*_both` / `*_all` when the
/// model has no such combination (`both`: segmentation and sketch; `all`: every scored modality,
/// when that is more than one modality and not just the two of `both`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub n: usize,
    pub steps: usize,
    pub strength: f32,
    /// mIoU of the segmenter on generated images, conditioned on the segmentation alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_mcm: Option<f64>,
    /// ... conditioned on segmentation and sketch together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_mcm_both: Option<f64>,
    /// ... conditioned on every scored modality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_mcm_all: Option<f64>,
    /// ... from the base alone (strength 0), same seeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_base: Option<f64>,
    /// The segmenter's own mIoU on the real held-out images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub miou_ceiling: Option<f64>,
    /// fsd (module doc; lower is more realistic) of the images of `miou_mcm`: conditioned on the
    /// segmentation alone, against the reference images (`fsd_reference`). Absent without
    /// `[segmenter] features` or with fewer than [`fsd::MIN_IMAGES`] examples or reference images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_mcm: Option<f64>,
    /// ... of the images of `miou_mcm_both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_mcm_both: Option<f64>,
    /// ... of the images of `miou_mcm_all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_mcm_all: Option<f64>,
    /// ... of the base alone (strength 0), same seeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_base: Option<f64>,
    /// The real images of the scored examples against the reference: the floor of the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_ceiling: Option<f64>,
    /// The reference of the fsd figures: this many real images of the data folder that are not
    /// scored (those after the first `n` by file name, at most [`FSD_REFERENCE`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsd_reference: Option<usize>,
    /// Edge F1 of generated images conditioned on the sketch alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_mcm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_mcm_both: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_mcm_all: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_base: Option<f64>,
    /// Edge F1 of the real images against their own sketches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_f1_ceiling: Option<f64>,
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
    /// Conditioned on every scored modality (see [`EvalReport`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rmse_mcm_all: Option<f64>,
    /// The base alone (strength 0), same seeds.
    pub rmse_base: f64,
    /// The estimator on the real held-out images.
    pub rmse_ceiling: f64,
    pub corr_mcm: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corr_mcm_all: Option<f64>,
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

/// Class ids `[H, W]` predicted by the segmenter for an RGB image, and its pooled features [F]
/// when it has them (`[segmenter] features`, see [`load_segmenter`]).
///
/// # Errors
/// Inference failure.
pub fn segment(segmenter: &Net, img: &RgbImage, range: [f32; 2]) -> Result<(Array2<u8>, Option<Vec<f32>>), EvalError> {
    let mut outputs = segmenter.run(vec![from_image(img, range).into_tensor()])?.into_iter();
    let logits = outputs.next().expect("a segmenter has logits");
    let logits = logits.index_axis(Axis(0), 0);
    let (_, h, w) = logits.dim();
    let classes = Array2::from_shape_fn((h, w), |(y, x)| {
        let col = logits.slice(ndarray::s![.., y, x]);
        col.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u8
    });
    Ok((classes, outputs.next().map(|f| f.iter().copied().collect())))
}

/// A map `[C, H, W]` estimated from an RGB image by a dense modality's reference estimator.
///
/// # Errors
/// Inference failure.
pub fn estimate(estimator: &Net, img: &RgbImage, range: [f32; 2]) -> Result<Array3<f32>, EvalError> {
    Ok(estimator.run(vec![from_image(img, range).into_tensor()])?.remove(0).index_axis_move(Axis(0), 0))
}

/// How a scored modality judges an image against its input map.
enum Judge {
    /// The reference segmenter's class map against the input (mIoU over `classes`).
    Segmenter { net: Net, classes: usize },
    /// Canny edges against the input strokes (edge F1).
    Edges,
    /// The modality's reference estimator against the input map (RMSE, correlation).
    Estimator(Net),
}

/// One modality an evaluation scores, in model order.
struct Scored {
    name: String,
    judge: Judge,
}

/// What one modality's judge accumulated over the examples for one variant.
#[derive(Debug, Clone)]
enum Counts {
    /// The segmenter's IoU counts and its features of each image (empty without features).
    Iou(IouCounts, Vec<Vec<f32>>),
    Edges(EdgeCounts),
    Dense(DenseCounts),
}

impl Counts {
    /// mIoU or edge F1; None for dense counts (two figures, see [`Self::dense`]).
    fn value(&self) -> Option<f64> {
        match self {
            Self::Iou(c, _) => Some(c.miou()),
            Self::Edges(c) => Some(c.f1()),
            Self::Dense(_) => None,
        }
    }

    fn dense(&self) -> Option<DenseCounts> {
        if let Self::Dense(c) = self { Some(*c) } else { None }
    }

    /// The segmenter's features of each image (empty for the other judges).
    fn features(&self) -> &[Vec<f32>] {
        if let Self::Iou(_, f) = self { f } else { &[] }
    }
}

impl Scored {
    /// The modalities of the model that have a judge: a segmentation with `[segmenter]`, a sketch,
    /// a dense modality with `[estimators.NAME]`; the others are left out with a warning.
    ///
    /// # Errors
    /// Nothing can be scored; a reference net fails to load.
    fn of_model(generator: &Pipeline, backend: &Backend) -> Result<Vec<Self>, EvalError> {
        let (info, dir) = (generator.info(), &generator.models().dir);
        let mut scored = Vec::new();
        for m in &info.modalities {
            let judge = match m.kind {
                ModalityKind::Segmentation if info.segmenter.is_some() => {
                    Judge::Segmenter { net: load_segmenter(dir, info, backend)?, classes: m.channels }
                }
                ModalityKind::Sketch => Judge::Edges,
                ModalityKind::Dense if info.estimators.contains_key(&m.name) => {
                    Judge::Estimator(load_estimator(dir, info, &m.name, backend)?)
                }
                ModalityKind::Segmentation => {
                    log::warn!("{}: no [segmenter]: {} is not scored (mcm-train segmenter)", dir.display(), m.name);
                    continue;
                }
                ModalityKind::Dense => {
                    log::warn!("{}: no [estimators.{}]: {} is not scored (mcm-train estimator)", dir.display(), m.name, m.name);
                    continue;
                }
            };
            scored.push(Self { name: m.name.clone(), judge });
        }
        if scored.is_empty() {
            return Err(EvalError::Data {
                path: dir.join("model.toml"),
                message: "nothing to score: eval needs a sketch, a segmentation with [segmenter] or a dense modality with \
                          [estimators.NAME]"
                    .into(),
            });
        }
        Ok(scored)
    }

    fn counts(&self) -> Counts {
        match &self.judge {
            Judge::Segmenter { classes, .. } => Counts::Iou(IouCounts::new(*classes), Vec::new()),
            Judge::Edges => Counts::Edges(EdgeCounts::default()),
            Judge::Estimator(_) => Counts::Dense(DenseCounts::default()),
        }
    }

    /// Judge `img` against this modality's input `map` into `counts` (made by [`Self::counts`]).
    fn score(&self, counts: &mut Counts, img: &RgbImage, map: &ModalityMap, range: [f32; 2]) -> Result<(), EvalError> {
        match (&self.judge, counts, map) {
            (Judge::Segmenter { net, .. }, Counts::Iou(c, features), ModalityMap::Segmentation(truth)) => {
                let (classes, f) = segment(net, img, range)?;
                c.add(&classes, truth);
                features.extend(f);
            }
            (Judge::Edges, Counts::Edges(c), ModalityMap::Sketch(strokes)) => c.add(&edges_of(img), &strokes_to_edges(strokes)),
            (Judge::Estimator(net), Counts::Dense(c), ModalityMap::Dense(truth)) => c.add(estimate(net, img, range)?.view(), truth.view()),
            _ => unreachable!("counts come from Scored::counts and maps from decode_frame of the same modality"),
        }
        Ok(())
    }
}

/// One way of generating per example, all with the example's seed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// The base alone (strength 0).
    Base,
    /// The real image (the ceilings).
    Real,
    /// The MCM with scored modality `j` alone.
    Alone(usize),
    /// The MCM with the segmentation and the sketch (scored indices).
    Both(usize, usize),
    /// The MCM with every scored modality.
    All,
}

impl Variant {
    /// The variants for these scored modalities (see [`EvalReport`]).
    fn list(scored: &[Scored]) -> Vec<Self> {
        let index = |pick: fn(&Judge) -> bool| scored.iter().position(|s| pick(&s.judge));
        let (seg, sketch) = (index(|j| matches!(j, Judge::Segmenter { .. })), index(|j| matches!(j, Judge::Edges)));
        Self::list_for(scored.len(), seg.zip(sketch))
    }

    /// The variants for `count` scored modalities, `both` the (segmentation, sketch) indices.
    fn list_for(count: usize, both: Option<(usize, usize)>) -> Vec<Self> {
        let mut list = vec![Self::Base, Self::Real];
        list.extend((0..count).map(Self::Alone));
        list.extend(both.map(|(a, b)| Self::Both(a, b)));
        if count > 2 || (count == 2 && both.is_none()) {
            list.push(Self::All);
        }
        list
    }
}

/// One held-out example: the real image and one map per scored modality, decoded through the
/// device's frame decoder.
struct Example {
    image: RgbImage,
    maps: Vec<ModalityMap>,
}

/// The PNG images of `data/images`, sorted by file name.
fn image_files(data: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let images = data.join("images");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| EvalError::Data { path: images.clone(), message: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    names.sort();
    Ok(names)
}

/// An image file resized to the model's `size` (triangle filter), as RGB.
fn read_image(path: &Path, size: usize) -> Result<RgbImage, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Data { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(image::load_from_memory(&bytes)
        .map_err(|e| EvalError::Data { path: path.to_path_buf(), message: e.to_string() })?
        .resize_exact(size as u32, size as u32, image::imageops::FilterType::Triangle)
        .to_rgb8())
}

/// The segmenter's features of the reference images of fsd: the real images of `files` after the
/// first `limit` (at most [`FSD_REFERENCE`]); empty without a segmenter with features.
fn reference_features(files: &[PathBuf], generator: &Pipeline, scored: &[Scored], limit: usize) -> Result<Vec<Vec<f32>>, EvalError> {
    let Some(net) = scored.iter().find_map(|s| if let Judge::Segmenter { net, .. } = &s.judge { Some(net) } else { None }) else {
        return Ok(Vec::new());
    };
    let (size, range) = (generator.info().image.size, generator.info().image.value_range);
    let mut features = Vec::new();
    for path in files.iter().skip(limit).take(FSD_REFERENCE) {
        match segment(net, &read_image(path, size)?, range)?.1 {
            Some(f) => features.push(f),
            None => break, // a segmenter without features: no fsd
        }
    }
    Ok(features)
}

/// The first `limit` of `files` (the dataset's images) with their maps.
fn load_examples(data: &Path, files: &[PathBuf], generator: &Pipeline, scored: &[Scored], limit: usize) -> Result<Vec<Example>, EvalError> {
    let info = generator.info();
    let size = info.image.size;
    let names = &files[..limit.min(files.len())];
    if let Some(s) = scored.iter().find(|s| !names.is_empty() && !data.join(&s.name).is_dir()) {
        return Err(EvalError::Data {
            path: data.join(&s.name),
            message: format!("no such folder: the model's modality {:?} is scored and needs a map per image", s.name),
        });
    }
    let limits = FrameLimits::default();
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| EvalError::Data { path: p.clone(), message: e.to_string() });
    let decode = |name: &str, file: &Path| -> Result<ModalityMap, EvalError> {
        let p = data.join(name).join(file.file_name().unwrap_or_default());
        let modality = info.modality(name).expect("scored modalities are the model's");
        decode_frame(&read(p.clone())?, modality, size, &limits).map_err(|e| EvalError::Data { path: p, message: e.to_string() })
    };
    names
        .iter()
        .map(|p| {
            let image = read_image(p, size)?;
            let maps = scored.iter().map(|s| decode(&s.name, p)).collect::<Result<_, _>>()?;
            Ok(Example { image, maps })
        })
        .collect()
}

/// Run the evaluation of `model_dir` on the dataset folder `data` (images/ and one folder per
/// scored modality, named after it: segmentation/, sketch/, depth/ ...) with the nets (base, MCM,
/// segmenter, estimators) run by `backend`.
///
/// # Errors
/// Missing files, a model with nothing to score, inference failures, and
/// [`ModelError::Backend`] when the backend cannot be used.
pub fn evaluate(model_dir: &Path, data: &Path, opts: &EvalOptions, backend: &Backend) -> Result<EvalReport, EvalError> {
    let start = Instant::now();
    let generator = Pipeline::load(model_dir, backend)?;
    let range = generator.info().image.value_range;
    // The judges run in f32 whatever the generator's precision: f16 is measured on the generator alone.
    let scored = Scored::of_model(&generator, &backend.clone().with_precision(Precision::F32, false))?;
    let files = image_files(data)?;
    let examples = load_examples(data, &files, &generator, &scored, opts.limit)?;
    if examples.is_empty() {
        return Err(EvalError::Data { path: data.join("images"), message: "no PNG images".into() });
    }
    let reference = reference_features(&files, &generator, &scored, opts.limit)?;
    if reference.len() < fsd::MIN_IMAGES && scored.iter().any(|s| matches!(s.judge, Judge::Segmenter { .. })) {
        log::warn!("{}: no fsd: it needs at least {} images beyond the {} scored", data.display(), fsd::MIN_IMAGES, opts.limit);
    }
    let variants = Variant::list(&scored);
    // counts[j][v]: scored modality j judged on the images of variant v
    let mut counts: Vec<Vec<Counts>> = scored.iter().map(|s| vec![s.counts(); variants.len()]).collect();
    for (i, ex) in examples.iter().enumerate() {
        let params = |strength| GenerationParams { seed: opts.seed + i as u64, steps: opts.steps, strength, eta: 0.0, text: TextParams::default() };
        let given = |js: &[usize]| -> Maps { js.iter().map(|&j| (scored[j].name.clone(), ex.maps[j].clone())).collect() };
        let every: Vec<usize> = (0..scored.len()).collect();
        for (v, variant) in variants.iter().enumerate() {
            let img = match *variant {
                Variant::Base => generator.generate(&given(&every), &params(0.0))?,
                Variant::Real => ex.image.clone(),
                Variant::Alone(j) => generator.generate(&given(&[j]), &params(opts.strength))?,
                Variant::Both(a, b) => generator.generate(&given(&[a, b]), &params(opts.strength))?,
                Variant::All => generator.generate(&given(&every), &params(opts.strength))?,
            };
            for (j, s) in scored.iter().enumerate() {
                s.score(&mut counts[j][v], &img, &ex.maps[j], range)?;
            }
        }
        log::info!("eval {}/{}", i + 1, examples.len());
    }
    Ok(report(&scored, &variants, &counts, &reference, examples.len(), opts, start))
}

/// The [`EvalReport`] of accumulated `counts[modality][variant]`.
fn report(
    scored: &[Scored],
    variants: &[Variant],
    counts: &[Vec<Counts>],
    reference: &[Vec<f32>],
    n: usize,
    opts: &EvalOptions,
    start: Instant,
) -> EvalReport {
    let pos = |want: Variant| variants.iter().position(|v| *v == want);
    let both = variants.iter().position(|v| matches!(v, Variant::Both(..)));
    // the variants a modality's figures come from: [alone, both, all, base, real]
    let slots = |j: usize| [pos(Variant::Alone(j)), both, pos(Variant::All), pos(Variant::Base), pos(Variant::Real)];
    let figures = |pick: fn(&Judge) -> bool| -> [Option<f64>; 5] {
        match scored.iter().position(|s| pick(&s.judge)) {
            Some(j) => slots(j).map(|v| v.and_then(|v| counts[j][v].value())),
            None => [None; 5],
        }
    };
    let [miou_mcm, miou_mcm_both, miou_mcm_all, miou_base, miou_ceiling] = figures(|j| matches!(j, Judge::Segmenter { .. }));
    let [edge_f1_mcm, edge_f1_mcm_both, edge_f1_mcm_all, edge_f1_base, edge_f1_ceiling] = figures(|j| matches!(j, Judge::Edges));
    let [fsd_mcm, fsd_mcm_both, fsd_mcm_all, fsd_base, fsd_ceiling] = match scored.iter().position(|s| matches!(s.judge, Judge::Segmenter { .. })) {
        Some(j) => {
            slots(j).map(|v| v.and_then(|v| fsd::fsd(counts[j][v].features(), reference)))
        }
        None => [None; 5],
    };
    let dense = scored
        .iter()
        .enumerate()
        .filter_map(|(j, s)| {
            let [mcm, _, all, base, real] = slots(j).map(|v| v.and_then(|v| counts[j][v].dense()));
            let (mcm, base, real) = (mcm?, base?, real?);
            let scores = DenseScores {
                rmse_mcm: mcm.rmse(),
                rmse_mcm_all: all.map(|c| c.rmse()),
                rmse_base: base.rmse(),
                rmse_ceiling: real.rmse(),
                corr_mcm: mcm.corr(),
                corr_mcm_all: all.map(|c| c.corr()),
                corr_base: base.corr(),
                corr_ceiling: real.corr(),
            };
            Some((s.name.clone(), scores))
        })
        .collect();
    EvalReport {
        n,
        steps: opts.steps,
        strength: opts.strength,
        miou_mcm,
        miou_mcm_both,
        miou_mcm_all,
        miou_base,
        miou_ceiling,
        fsd_mcm,
        fsd_mcm_both,
        fsd_mcm_all,
        fsd_base,
        fsd_ceiling,
        fsd_reference: fsd_ceiling.map(|_| reference.len()),
        edge_f1_mcm,
        edge_f1_mcm_both,
        edge_f1_mcm_all,
        edge_f1_base,
        edge_f1_ceiling,
        dense,
        seconds: start.elapsed().as_secs_f64(),
    }
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
    fn variants_for_any_subset_of_modalities() {
        use Variant::*;
        // depth alone; segmentation + depth; segmentation + sketch; segmentation + sketch + depth
        assert_eq!(Variant::list_for(1, None), [Base, Real, Alone(0)]);
        assert_eq!(Variant::list_for(2, None), [Base, Real, Alone(0), Alone(1), All]);
        assert_eq!(Variant::list_for(2, Some((0, 1))), [Base, Real, Alone(0), Alone(1), Both(0, 1)]);
        assert_eq!(Variant::list_for(3, Some((0, 1))), [Base, Real, Alone(0), Alone(1), Alone(2), Both(0, 1), All]);
    }

    #[test]
    fn canny_finds_a_step_edge() {
        let img = RgbImage::from_fn(32, 32, |x, _| if x < 16 { image::Rgb([20, 20, 20]) } else { image::Rgb([220, 220, 220]) });
        let e = edges_of(&img);
        let cols: Vec<u32> = e.enumerate_pixels().filter(|p| p.2[0] > 0).map(|p| p.0).collect();
        assert!(!cols.is_empty() && cols.iter().all(|c| (14..=17).contains(c)), "{cols:?}");
    }
}
