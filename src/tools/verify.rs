//! `mcm-edge verify`: replay a model directory's test vectors (written by `mcm-train`'s exporter
//! from PyTorch and diffusers) through the device's backend, so that a user who brought a model
//! knows the device computes what PyTorch did:
//!
//! - every net with vectors (`test_vectors/NET.INPUT.npy` -> `NET.OUTPUT.npy`): base, MCM,
//!   segmenter, estimators, and in contract 2 the decoder, the encoder and the text encoder, one
//!   batch row at a time, within 1e-4 of the output's scale;
//! - the tokenizer (`tokenizer.prompts.json` -> `tokenizer.input_ids.npy`): the same ids;
//! - diffusers' own pipeline (`pipeline.CASE.*`, `train/mcm_train/export/pipeline_vectors.py`):
//!   the scheduler's timesteps, and the decoded image of the whole generation from the recorded
//!   latents and sampler noise, within 1e-3 in [0, 1].

use std::path::{Path, PathBuf};

use ndarray::{Array4, ArrayD, Axis, Ix4, Ix5};
use ndarray_npy::{ReadNpyError, ReadableElement, read_npy};
use serde::{Deserialize, Serialize};
use tract_onnx::prelude::{IntoTensor, Tensor};

use crate::contract::{Maps, ModelInfo};
use crate::diffusion::{GenerateError, GenerationParams, LoadError, Pipeline, Replay, TextParams};
use crate::runtime::{Backend, ModelError, Net, base_inputs, load_encoder, load_estimator, load_segmenter};

/// Largest difference of a net's output from PyTorch's, relative to the output's scale
/// (`max(1, max |want|)`).
pub const NET_TOLERANCE: f64 = 1e-4;
/// Largest difference of a pipeline's decoded image from diffusers', in [0, 1] units.
pub const IMAGE_TOLERANCE: f64 = 1e-3;

/// Why verification could not run (a failed comparison is a [`Check`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// A vector file is missing or unreadable.
    #[error("{path}: {message}")]
    Vector { path: PathBuf, message: String },
    /// The directory has no test vectors at all.
    #[error("{0}: no test_vectors/ to replay (export the model with mcm-train)")]
    NoVectors(PathBuf),
}

/// One comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was compared, e.g. `base.eps[1]`, `tokenizer "a photo"`, `pipeline guided image`.
    pub what: String,
    /// Largest difference found (ids: the count of differing ids).
    pub max_abs_diff: f64,
    /// What is accepted.
    pub tolerance: f64,
}

impl Check {
    /// Whether the difference is within the tolerance.
    pub fn ok(&self) -> bool {
        self.max_abs_diff <= self.tolerance
    }
}

/// A pipeline case's settings (`pipeline.CASE.json`).
#[derive(Debug, Deserialize)]
struct PipelineCase {
    prompt: String,
    negative_prompt: String,
    guidance_scale: f32,
    steps: usize,
}

/// Replay every test vector of `dir` with `backend`; the checks, failed ones included.
///
/// # Errors
/// The model does not load, a vector is missing or unreadable, a generation fails, or there are
/// no vectors.
pub fn verify(dir: &Path, backend: &Backend) -> Result<Vec<Check>, VerifyError> {
    if !dir.join("test_vectors").is_dir() {
        return Err(VerifyError::NoVectors(dir.to_path_buf()));
    }
    let pipeline = Pipeline::load(dir, backend)?;
    let models = pipeline.models();
    let info = &models.info;
    let mut checks = Vec::new();
    let base_in: Vec<&str> = base_inputs(info).iter().map(|s| s.name).collect();
    checks.extend(replay_net(dir, "base", &models.base, &base_in, &[info.schedule.prediction().output()])?);
    if let Some(mcm) = &models.mcm {
        checks.extend(replay_net(dir, "mcm", mcm, &["sample", "eps", "cond", "timestep"], &["gamma", "beta"])?);
    }
    if let Some(decoder) = &models.decoder {
        checks.extend(replay_net(dir, "decoder", decoder, &["latent"], &["image"])?);
    }
    if info.latent.as_ref().is_some_and(|l| l.encoder.is_some()) && has_vectors(dir, "encoder") {
        checks.extend(replay_net(dir, "encoder", &load_encoder(dir, info, backend)?, &["image"], &["latent"])?);
    }
    if let Some(text) = &models.text {
        checks.extend(replay_net(dir, "text_encoder", &text.net, &["input_ids"], &["last_hidden_state"])?);
        checks.extend(replay_tokenizer(dir, |p| text.token_ids(p))?);
    }
    if info.segmenter.is_some() && has_vectors(dir, "segmenter") {
        let outputs: &[&str] = if info.segmenter.as_ref().is_some_and(|s| s.features.is_some()) { &["logits", "features"] } else { &["logits"] };
        checks.extend(replay_net(dir, "segmenter", &load_segmenter(dir, info, backend)?, &["image"], outputs)?);
    }
    for (name, est) in &info.estimators {
        let stem = Path::new(&est.file).file_stem().and_then(|s| s.to_str()).unwrap_or(name);
        if has_vectors(dir, stem) {
            checks.extend(replay_net(dir, stem, &load_estimator(dir, info, name, backend)?, &["image"], &["map"])?);
        }
    }
    for case in pipeline_cases(dir) {
        checks.extend(replay_pipeline(dir, &pipeline, info, &case)?);
    }
    Ok(checks)
}

fn has_vectors(dir: &Path, net: &str) -> bool {
    std::fs::read_dir(dir.join("test_vectors"))
        .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&format!("{net}."))))
        .unwrap_or(false)
}

/// `DIR/test_vectors/NAME.npy`.
fn vector<T: ReadableElement>(dir: &Path, name: &str) -> Result<ArrayD<T>, VerifyError> {
    let path = dir.join("test_vectors").join(format!("{name}.npy"));
    read_npy(&path).map_err(|e: ReadNpyError| VerifyError::Vector { path, message: e.to_string() })
}

/// An input vector as the tensor the net is fed with: token ids as int64, everything else f32.
fn input_vector(dir: &Path, name: &str) -> Result<Tensor, VerifyError> {
    match vector::<f32>(dir, name) {
        Ok(a) => Ok(a.into_tensor()),
        Err(_) => Ok(vector::<i64>(dir, name)?.into_tensor()),
    }
}

/// Row `i` of a vector along its first axis, if it has one.
fn nth_row<T>(a: &ArrayD<T>, i: usize) -> Option<ndarray::ArrayViewD<'_, T>> {
    (a.ndim() > 0 && i < a.shape()[0]).then(|| a.index_axis(Axis(0), i))
}

/// Largest element difference, and the scale `max(1, max |want|)`.
fn diff_and_scale(got: &ArrayD<f32>, want: &ArrayD<f32>) -> (f64, f64) {
    if got.shape() != want.shape() {
        return (f64::INFINITY, 1.0);
    }
    let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    (f64::from(diff), f64::from(want.iter().map(|v| v.abs()).fold(1.0f32, f32::max)))
}

/// Run `net` one batch row at a time (nets are loaded for batch 1) on `NET.INPUT` and compare
/// with `NET.OUTPUT`.
fn replay_net(dir: &Path, net_name: &str, net: &Net, inputs: &[&str], outputs: &[&str]) -> Result<Vec<Check>, VerifyError> {
    let ins: Vec<Tensor> = inputs.iter().map(|i| input_vector(dir, &format!("{net_name}.{i}"))).collect::<Result<_, _>>()?;
    let wants: Vec<ArrayD<f32>> = outputs.iter().map(|o| vector::<f32>(dir, &format!("{net_name}.{o}"))).collect::<Result<_, _>>()?;
    let batch = ins.first().and_then(|t| t.shape().first().copied()).unwrap_or(0);
    let mut checks = Vec::new();
    for b in 0..batch {
        let row: Vec<Tensor> = ins.iter().map(|t| t.slice(0, b, b + 1)).collect::<Result<_, _>>().map_err(|e| VerifyError::Vector {
            path: dir.join("test_vectors"),
            message: format!("{net_name}: inputs of unequal batch: {e:#}"),
        })?;
        let got = net.run_dyn(&row)?;
        for ((o, g), want) in outputs.iter().zip(got).zip(&wants) {
            let (diff, scale) = match nth_row(want, b) {
                Some(want) => diff_and_scale(&g, &want.insert_axis(Axis(0)).to_owned()),
                None => (f64::INFINITY, 1.0), // fewer recorded rows than inputs: a broken vector file
            };
            checks.push(Check { what: format!("{net_name}.{o}[{b}]"), max_abs_diff: diff, tolerance: NET_TOLERANCE * scale });
        }
    }
    Ok(checks)
}

/// The tokenizer's ids for each prompt of `tokenizer.prompts.json` against the Python tokenizer's.
fn replay_tokenizer(dir: &Path, token_ids: impl Fn(&str) -> Result<Vec<i64>, ModelError>) -> Result<Vec<Check>, VerifyError> {
    let path = dir.join("test_vectors/tokenizer.prompts.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let read_err = |message: String| VerifyError::Vector { path: path.clone(), message };
    let prompts: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| read_err(e.to_string()))?).map_err(|e| read_err(e.to_string()))?;
    let want = vector::<i64>(dir, "tokenizer.input_ids")?;
    prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let got = token_ids(prompt)?;
            let differ = match nth_row(&want, i) {
                Some(row) if row.len() == got.len() => got.iter().zip(row.iter()).filter(|(a, b)| a != b).count(),
                Some(row) => got.len().max(row.len()),
                None => got.len(),
            };
            let shown: String = prompt.chars().take(32).collect();
            Ok(Check { what: format!("tokenizer ids of {shown:?}"), max_abs_diff: differ as f64, tolerance: 0.0 })
        })
        .collect()
}

/// The names CASE of `test_vectors/pipeline.CASE.json`, sorted.
fn pipeline_cases(dir: &Path) -> Vec<String> {
    let mut cases: Vec<String> = std::fs::read_dir(dir.join("test_vectors"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("pipeline.")?.strip_suffix(".json").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    cases
}

/// diffusers' generation of `case` replayed: its timesteps, and its decoded image from the
/// recorded latents and noise (the base alone: strength 0).
fn replay_pipeline(dir: &Path, pipeline: &Pipeline, info: &ModelInfo, case: &str) -> Result<Vec<Check>, VerifyError> {
    let path = dir.join(format!("test_vectors/pipeline.{case}.json"));
    let read_err = |message: String| VerifyError::Vector { path: path.clone(), message };
    let settings: PipelineCase = serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| read_err(e.to_string()))?).map_err(|e| read_err(e.to_string()))?;
    let timesteps = vector::<i64>(dir, &format!("pipeline.{case}.timesteps"))?;
    let ours: Vec<i64> = pipeline.schedule().timesteps(settings.steps).map_err(GenerateError::from)?.iter().map(|s| s.0 as i64).collect();
    let differ = if ours.len() == timesteps.len() { ours.iter().zip(timesteps.iter()).filter(|(a, b)| a != b).count() } else { ours.len().max(timesteps.len()) };
    let shape_err = |what: &str, e: ndarray::ShapeError| read_err(format!("pipeline.{case}.{what}: {e}"));
    let latents = vector::<f32>(dir, &format!("pipeline.{case}.latents"))?.into_dimensionality::<Ix4>().map_err(|e| shape_err("latents", e))?;
    let noise = vector::<f32>(dir, &format!("pipeline.{case}.noise"))?.into_dimensionality::<Ix5>().map_err(|e| shape_err("noise", e))?;
    let want = vector::<f32>(dir, &format!("pipeline.{case}.image"))?;
    let mut replay = Replay::new(noise.outer_iter().map(|n| n.to_owned()).collect());
    let params = GenerationParams {
        seed: 0,
        steps: settings.steps,
        strength: 0.0,
        eta: 0.0,
        text: TextParams { prompt: settings.prompt, negative_prompt: settings.negative_prompt, guidance_scale: Some(settings.guidance_scale) },
    };
    let image = pipeline.sample(&Maps::new(), &params, latents, &mut replay)?;
    let [lo, hi] = info.image.value_range;
    let unit: Array4<f32> = image.mapv(|v| ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let (diff, _) = diff_and_scale(&unit.into_dyn(), &want);
    let noise_misses = (replay.misses() + replay.left()) as f64;
    Ok(vec![
        Check { what: format!("pipeline {case}: timesteps"), max_abs_diff: differ as f64, tolerance: 0.0 },
        Check { what: format!("pipeline {case}: sampler noise used as recorded (misses)"), max_abs_diff: noise_misses, tolerance: 0.0 },
        Check { what: format!("pipeline {case}: decoded image ({} steps)", settings.steps), max_abs_diff: diff, tolerance: IMAGE_TOLERANCE },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_vectors_fail_their_checks_instead_of_panicking() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-sd");
        let dir = std::env::temp_dir().join(format!("mcm-edge-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("test_vectors")).unwrap();
        for entry in std::fs::read_dir(&src).unwrap().chain(std::fs::read_dir(src.join("test_vectors")).unwrap()) {
            let path = entry.unwrap().path();
            if path.is_file() {
                let rel = path.strip_prefix(&src).unwrap();
                std::fs::copy(&path, dir.join(rel)).unwrap();
            }
        }
        // One token row instead of eight, and a base output of one row instead of two.
        ndarray_npy::write_npy(dir.join("test_vectors/tokenizer.input_ids.npy"), &ndarray::Array2::<i64>::zeros((1, 77))).unwrap();
        let eps: ArrayD<f32> = vector(&src, "base.eps").unwrap();
        ndarray_npy::write_npy(dir.join("test_vectors/base.eps.npy"), &eps.slice_axis(Axis(0), (0..1).into()).to_owned()).unwrap();
        let checks = verify(&dir, &Backend::default()).unwrap();
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok()).map(|c| c.what.as_str()).collect();
        assert!(failed.contains(&"base.eps[1]"), "{failed:?}");
        assert!(failed.iter().filter(|w| w.starts_with("tokenizer")).count() >= 7, "{failed:?}");
        assert!(checks.iter().any(|c| c.what == "base.eps[0]" && c.ok()));
    }
}
