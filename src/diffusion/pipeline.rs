//! Generation: maps -> `cond` -> the sampler (DDIM, Euler or LCM) over the MCM-modulated base
//! (with a prompt's text embedding and classifier-free guidance for a text-conditional base) ->
//! the latent decoder of a latent base -> RGB image.

use std::path::{Path, PathBuf};

use image::RgbImage;
use ndarray::{Array3, Array4};
use tract_onnx::prelude::{IntoTensor, Tensor};

use super::ddim::ddim_step;
use super::guidance::{MAX_STRENGTH, apply_strength, classifier_free_guidance, guidance_scale_embedding};
use super::lcm::lcm_step;
use super::noise::{Noise, NoiseSource};
use super::schedule::{Schedule, ScheduleError};
use crate::contract::{CondError, Maps, ModelInfo, Prediction, SamplerKind, build_cond};
use crate::error_code::ErrorCode;
use crate::runtime::{Backend, BackendKind, ModelError, Models, timestep_tensor};

/// Largest classifier-free guidance scale a generation accepts (diffusers' pipelines use 1-15;
/// far beyond, the guided eps leaves the range the base was trained on).
pub const MAX_GUIDANCE_SCALE: f32 = 30.0;

/// diffusers' default guidance scale, where `[text] guidance_scale` does not give the model's own.
pub const DEFAULT_GUIDANCE_SCALE: f32 = 7.5;

/// Longest prompt, in characters, a generation accepts (the tokenizer truncates to `max_length`
/// tokens anyway; this bounds the work of tokenizing).
pub const MAX_PROMPT_CHARS: usize = 2000;

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    /// Seed of the initial noise `x_T` (and of the sampler's noise: DDIM with `eta > 0`, LCM).
    pub seed: u64,
    /// Sampling steps, `1..=num_train_timesteps` (a distilled base: its count only).
    pub steps: usize,
    /// Conditioning strength `s`: `eps = eps_base + s * (eps_hat - eps_base)`; 0 = base alone, 1 = MCM.
    pub strength: f32,
    /// DDIM eta (0 = deterministic DDIM, 1 = DDPM-like); the Euler and LCM samplers ignore it.
    pub eta: f32,
    /// The prompt of a text-conditional base.
    pub text: TextParams,
}

/// The prompt settings of one generation (text-conditional bases only).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TextParams {
    /// What to generate; "" is the unconditional embedding (what a model without a prompt sees).
    pub prompt: String,
    /// What classifier-free guidance steers away from ("" = unconditional).
    pub negative_prompt: String,
    /// Classifier-free guidance scale, 0..=[`MAX_GUIDANCE_SCALE`]; None: the model's `[text]
    /// guidance_scale`, else [`DEFAULT_GUIDANCE_SCALE`]. At <= 1 there is no unconditional pass;
    /// a base with LCM's guidance embedding gets `scale - 1` embedded instead of a second pass.
    pub guidance_scale: Option<f32>,
}

/// A prompt setting out of bounds, naming the field: the one check behind requests, the config
/// and the pipeline.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TextParamError {
    /// `prompt` or `negative_prompt` longer than [`MAX_PROMPT_CHARS`].
    #[error("{field}: {chars} characters, at most {MAX_PROMPT_CHARS}")]
    PromptTooLong { field: &'static str, chars: usize },
    /// A guidance scale outside 0..=[`MAX_GUIDANCE_SCALE`] (or not finite).
    #[error("guidance_scale {0} must be within 0..={MAX_GUIDANCE_SCALE}")]
    GuidanceScale(f64),
}

impl TextParams {
    /// Whether these settings ask for anything a model without text could not do.
    pub fn is_given(&self) -> bool {
        !self.prompt.is_empty() || !self.negative_prompt.is_empty() || self.guidance_scale.is_some()
    }

    /// Check the length of the prompt field `field`.
    ///
    /// # Errors
    /// [`TextParamError::PromptTooLong`].
    pub fn check_prompt(field: &'static str, text: &str) -> Result<(), TextParamError> {
        let chars = text.chars().count();
        if chars > MAX_PROMPT_CHARS { Err(TextParamError::PromptTooLong { field, chars }) } else { Ok(()) }
    }

    /// A guidance scale as the sampler takes it.
    ///
    /// # Errors
    /// [`TextParamError::GuidanceScale`] outside 0..=[`MAX_GUIDANCE_SCALE`] or not finite.
    pub fn check_guidance_scale(scale: f64) -> Result<f32, TextParamError> {
        if scale.is_finite() && (0.0..=f64::from(MAX_GUIDANCE_SCALE)).contains(&scale) { Ok(scale as f32) } else { Err(TextParamError::GuidanceScale(scale)) }
    }

    /// Check both prompts and the guidance scale, when given.
    ///
    /// # Errors
    /// The first [`TextParamError`].
    pub fn check(&self) -> Result<(), TextParamError> {
        Self::check_prompt("prompt", &self.prompt)?;
        Self::check_prompt("negative_prompt", &self.negative_prompt)?;
        self.guidance_scale.map_or(Ok(()), |g| Self::check_guidance_scale(f64::from(g)).map(drop))
    }
}

/// A prompt made ready for a text-conditional base: the inputs its passes take at every step.
pub struct PromptEmbedding {
    /// `encoder_hidden_states` of the prompt, `[1, L, D]`.
    cond: Tensor,
    /// Of the negative prompt, when classifier-free guidance runs a second pass.
    uncond: Option<Tensor>,
    /// The guidance scale of that second pass.
    scale: f32,
    /// LCM's `timestep_cond` `[1, Dc]`, for a guidance-embedding base.
    timestep_cond: Option<Tensor>,
}

/// Why a model directory could not be loaded as a [`Pipeline`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `model.toml` or a net failed to load or check.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// `[schedule]` of `path` (model.toml) cannot be built.
    #[error("{path}: {source}")]
    Schedule { path: PathBuf, source: ScheduleError },
}

/// Why a generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Cond(#[from] CondError),
    #[error("invalid parameter: {0}")]
    Param(String),
    /// The step count does not fit the schedule.
    #[error("invalid parameter: {0}")]
    Steps(#[from] ScheduleError),
    /// A net's inputs or outputs broke the model contract at run time (e.g. an output shape).
    #[error(transparent)]
    Model(ModelError),
    /// The backend (tract, onnxruntime) failed while running a net.
    #[error("inference failed: {0}")]
    Inference(ModelError),
}

impl From<ModelError> for GenerateError {
    /// Backend failures are [`GenerateError::Inference`], contract breaks [`GenerateError::Model`].
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Tract { .. } | ModelError::Onnxruntime { .. } => GenerateError::Inference(e),
            other => GenerateError::Model(other),
        }
    }
}

impl GenerateError {
    /// The code for the `error` topic (README "MQTT interface").
    pub fn code(&self) -> ErrorCode {
        match self {
            GenerateError::Cond(_) => ErrorCode::InvalidMaps,
            GenerateError::Steps(ScheduleError::NotDistilledFor { .. }) => ErrorCode::InvalidSteps,
            GenerateError::Param(_) | GenerateError::Steps(_) => ErrorCode::InvalidParams,
            GenerateError::Model(_) => ErrorCode::ModelError,
            GenerateError::Inference(_) => ErrorCode::InferenceFailed,
        }
    }
}

/// Something that turns modality maps into an image: the device pipeline, or a test double.
pub trait ImageGenerator: Send + Sync {
    /// The loaded model's contract (image size, modalities).
    fn info(&self) -> &ModelInfo;
    /// Generate one image `[size, size]` RGB for `maps` (any subset of the model's modalities).
    ///
    /// # Errors
    /// Bad maps ([`GenerateError::Cond`]), parameters out of range, or an inference failure.
    fn generate(&self, maps: &Maps, params: &GenerationParams) -> Result<RgbImage, GenerateError>;
}

/// The device pipeline: `base.onnx` + `mcm.onnx`, DDIM, strength (README "Strength"), with the
/// nets run by the [`Backend`] they were loaded with ([`Pipeline::load`]).
pub struct Pipeline {
    models: Models,
    schedule: Schedule,
    /// Run classifier-free guidance's two base passes at once (tract with 2 threads or more).
    concurrent_guidance: bool,
}

impl Pipeline {
    /// Load a model directory once with `backend` (tract plans or onnxruntime sessions are built
    /// here, not per request).
    ///
    /// # Errors
    /// Any [`ModelError`], naming the file and the problem ([`ModelError::Backend`] when the
    /// backend cannot be used: not built in, library missing); [`LoadError::Schedule`] when the
    /// noise schedule of model.toml cannot be built.
    pub fn load(dir: &Path, backend: &Backend) -> Result<Self, LoadError> {
        let models = Models::load(dir, backend)?;
        let schedule = Schedule::new(&models.info.schedule, models.info.format)
            .map_err(|source| LoadError::Schedule { path: dir.join("model.toml"), source })?;
        let concurrent_guidance = backend.kind == BackendKind::Tract && backend.threads >= 2;
        Ok(Self { models, schedule, concurrent_guidance })
    }

    /// The loaded nets.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// The noise schedule and its timestep grids.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The prompt inputs of one generation, or None for a base without text.
    ///
    /// # Errors
    /// [`GenerateError::Param`] for a prompt given to a model without text, a prompt longer than
    /// [`MAX_PROMPT_CHARS`] or a guidance scale out of range; tokenizer and text-encoder failures.
    pub fn prompt(&self, params: &TextParams) -> Result<Option<PromptEmbedding>, GenerateError> {
        let info = &self.models.info;
        let Some(text) = &self.models.text else {
            if params.is_given() {
                return Err(GenerateError::Param("this model takes no prompt (no [text] in its model.toml)".into()));
            }
            return Ok(None);
        };
        params.check().map_err(|e| GenerateError::Param(e.to_string()))?;
        let scale = params.guidance_scale.or(text.info.guidance_scale).unwrap_or(DEFAULT_GUIDANCE_SCALE);
        let embed = |p: &str| text.embed(p).map(Array3::into_tensor);
        let timestep_cond = info.base.timestep_cond.map(|dim| guidance_scale_embedding(scale - 1.0, dim).into_tensor());
        let uncond = if timestep_cond.is_none() && scale > 1.0 { Some(embed(&params.negative_prompt)?) } else { None };
        Ok(Some(PromptEmbedding { cond: embed(&params.prompt)?, uncond, scale, timestep_cond }))
    }

    /// The inputs of one base pass, in contract order ([`crate::runtime::base_inputs`]): `x_t`
    /// `[1, c, h, w]`, the timestep, and the prompt's embedding (the conditional one) and guidance
    /// embedding where the base takes them.
    pub fn base_inputs(&self, x_t: &Array4<f32>, timestep: usize, prompt: Option<&PromptEmbedding>) -> Vec<Tensor> {
        self.pass_inputs(x_t, &timestep_tensor(timestep as f32, 1), prompt.map(|p| &p.cond), prompt.and_then(|p| p.timestep_cond.as_ref()))
    }

    fn pass_inputs(&self, x_t: &Array4<f32>, t: &Tensor, hidden: Option<&Tensor>, timestep_cond: Option<&Tensor>) -> Vec<Tensor> {
        let mut inputs = vec![x_t.clone().into_tensor(), t.clone()];
        inputs.extend(hidden.cloned());
        inputs.extend(timestep_cond.cloned());
        inputs
    }

    /// The base's prediction converted to eps, for the text embedding `hidden` when there is one.
    fn base_eps(&self, x_t: &Array4<f32>, t: &Tensor, timestep: usize, hidden: Option<&Tensor>, timestep_cond: Option<&Tensor>) -> Result<Array4<f32>, GenerateError> {
        let inputs = self.pass_inputs(x_t, t, hidden, timestep_cond);
        let prediction = self.models.base.run(inputs)?.remove(0);
        Ok(to_eps(prediction, x_t, self.schedule.alpha_bar[timestep], self.models.info.schedule.prediction()))
    }

    /// The guided noise prediction at one step: `eps_base` (the base's prediction converted to
    /// eps first, whatever its `prediction_type`, so that the MCM formula and `strength` keep
    /// their meaning; for a text-conditional base, with classifier-free guidance of the prompt
    /// against the negative prompt, Ho & Salimans 2022, as two batch-1 passes, run at once on
    /// tract with 2 threads or more: a fixed batch-2 plan was slower than two batch-1 runs), and when
    /// `strength != 0` the MCM's `eps_hat = eps * (1 + gamma) + beta` (Ham et al. 2023, Eq. 2) on
    /// the guided eps, mixed in by `strength`. `x_t` `[1, c, h, w]`, `cond` `[1, K, H, W]`.
    ///
    /// # Errors
    /// [`GenerateError::Param`] when strength != 0 and the model has no MCM; inference failures.
    pub fn eps(&self, x_t: &Array4<f32>, timestep: usize, cond: &Array4<f32>, prompt: Option<&PromptEmbedding>, strength: f32) -> Result<Array4<f32>, GenerateError> {
        let t = timestep_tensor(timestep as f32, 1);
        let timestep_cond = prompt.and_then(|p| p.timestep_cond.as_ref());
        let cond_pass = || self.base_eps(x_t, &t, timestep, prompt.map(|p| &p.cond), timestep_cond);
        let eps_base = match prompt.and_then(|p| p.uncond.as_ref().map(|u| (p, u))) {
            None => cond_pass()?,
            Some((p, uncond)) => {
                let uncond_pass = || self.base_eps(x_t, &t, timestep, Some(uncond), timestep_cond);
                let (eps, eps_uncond) = if self.concurrent_guidance {
                    std::thread::scope(|s| {
                        let uncond = s.spawn(uncond_pass);
                        let eps = cond_pass();
                        (eps, uncond.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                    })
                } else {
                    (cond_pass(), uncond_pass())
                };
                let mut eps = eps?;
                classifier_free_guidance(&mut eps, &eps_uncond?, p.scale);
                eps
            }
        };
        if strength == 0.0 {
            return Ok(eps_base);
        }
        let mcm = self.models.mcm.as_ref().ok_or_else(|| GenerateError::Param("strength != 0 needs an MCM ([mcm] in model.toml)".into()))?;
        let mut out = mcm.run(vec![x_t.clone().into_tensor(), eps_base.clone().into_tensor(), cond.clone().into_tensor(), t])?;
        let beta = out.pop().expect("two outputs");
        let gamma = out.pop().expect("two outputs");
        let mut eps_hat = &eps_base * &(gamma + 1.0) + beta;
        apply_strength(&mut eps_hat, &eps_base, strength);
        Ok(eps_hat)
    }

    /// The shape `[1, c, h, w]` of `x_T`: the latent grid of a latent base, else the image.
    pub fn sample_shape(&self) -> [usize; 4] {
        let [c, h, w] = self.models.info.sample_shape();
        [1, c, h, w]
    }

    /// Sample from `x_T` (`[1, c, h, w]`, unit normal) for `maps` and return the image `[1, C, H,
    /// W]` in the image value range (decoded by `decoder.onnx` for a latent base), with the
    /// sampler's noise from `noise` (what [`ImageGenerator::generate`] seeds, or a replay).
    ///
    /// # Errors
    /// As [`ImageGenerator::generate`].
    pub fn sample(&self, maps: &Maps, params: &GenerationParams, x_t: Array4<f32>, noise: &mut dyn NoiseSource) -> Result<Array4<f32>, GenerateError> {
        self.check_params(params)?;
        let info = &self.models.info;
        let timesteps = self.schedule.timesteps(params.steps)?;
        let cond = build_cond(info, maps)?;
        let prompt = self.prompt(&params.text)?;
        let clip = match info.format {
            1 => Some(info.image.value_range),
            _ => info.schedule.clip_sample_range.map(|r| [-r, r]),
        };
        let mut x = x_t * self.schedule.init_noise_scale(timesteps[0].1) as f32;
        for (i, &(t, ab_t, ab_prev)) in timesteps.iter().enumerate() {
            let eps = self.eps(&x, t, &cond, prompt.as_ref(), params.strength)?;
            match info.schedule.sampler {
                SamplerKind::Ddim => ddim_step(&mut x, &eps, ab_t, ab_prev, params.eta, clip, noise),
                SamplerKind::Euler => ddim_step(&mut x, &eps, ab_t, ab_prev, 0.0, clip, noise),
                SamplerKind::Lcm => {
                    let scaling = info.schedule.timestep_scaling.unwrap_or(10.0);
                    lcm_step(&mut x, &eps, t, (ab_t, ab_prev), scaling, clip, i + 1 == timesteps.len(), noise);
                }
            }
        }
        match &self.models.decoder {
            Some(decoder) => Ok(decoder.run(vec![x.into_tensor()])?.remove(0)),
            None => Ok(x),
        }
    }

    fn check_params(&self, params: &GenerationParams) -> Result<(), GenerateError> {
        if !params.strength.is_finite() || !(0.0..=MAX_STRENGTH).contains(&params.strength) {
            return Err(GenerateError::Param(format!("strength must be in [0, {MAX_STRENGTH}], got {}", params.strength)));
        }
        if !(0.0..=1.0).contains(&params.eta) {
            return Err(GenerateError::Param(format!("eta must be in [0, 1], got {}", params.eta)));
        }
        Ok(())
    }
}

impl ImageGenerator for Pipeline {
    fn info(&self) -> &ModelInfo {
        &self.models.info
    }

    fn generate(&self, maps: &Maps, params: &GenerationParams) -> Result<RgbImage, GenerateError> {
        let mut noise = Noise::new(params.seed);
        let x_t = noise.randn(self.sample_shape());
        let image = self.sample(maps, params, x_t, &mut noise)?;
        Ok(to_image(&image, self.models.info.image.value_range))
    }
}

/// eps implied by a base's `prediction` at `x_t = alpha x_0 + sigma eps` (alpha^2 = `alpha_bar`):
/// v -> `eps = sigma x_t + alpha v` (Salimans & Ho 2022, Sec. 4, alpha^2 + sigma^2 = 1); x_0 ->
/// `eps = (x_t - alpha x_0) / sigma`; eps as it is. All `[B, C, H, W]`.
pub fn to_eps(prediction: Array4<f32>, x_t: &Array4<f32>, alpha_bar: f64, kind: Prediction) -> Array4<f32> {
    let (alpha, sigma) = (alpha_bar.sqrt() as f32, (1.0 - alpha_bar).sqrt() as f32);
    match kind {
        Prediction::Epsilon => prediction,
        Prediction::VPrediction => prediction * alpha + &(x_t * sigma),
        Prediction::Sample => (x_t - &(prediction * alpha)) / sigma,
    }
}

/// `[1, C, H, W]` in `range` (e.g. [-1, 1]) -> RGB image, values clamped. C = 3 is RGB; C = 4
/// (e.g. a 4-channel benchmark base) shows its first three channels as RGB; C = 1 or 2 (grey, grey
/// + alpha) the first channel as grey. `model.toml` refuses other C at load.
pub fn to_image(x: &Array4<f32>, range: [f32; 2]) -> RgbImage {
    let (_, c, h, w) = x.dim();
    // RGB from the first three channels; with fewer, the first (grey) in all three.
    let rgb = if c >= 3 { [0, 1, 2] } else { [0, 0, 0] };
    RgbImage::from_fn(w as u32, h as u32, |px, py| {
        let v = |ch: usize| {
            let u = (x[[0, ch, py as usize, px as usize]] - range[0]) / (range[1] - range[0]);
            (u.clamp(0.0, 1.0) * 255.0).round() as u8
        };
        image::Rgb(rgb.map(v))
    })
}

/// RGB image -> `[1, 3, H, W]` in `range`; the inverse of [`to_image`].
pub fn from_image(img: &RgbImage, range: [f32; 2]) -> Array4<f32> {
    let (w, h) = img.dimensions();
    Array4::from_shape_fn([1, 3, h as usize, w as usize], |(_, ch, y, x)| {
        range[0] + (range[1] - range[0]) * img.get_pixel(x as u32, y as u32)[ch] as f32 / 255.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_of_one_to_four_channels() {
        // A grey or 4-channel base (export-diffusers writes `in_channels`) must not panic the worker.
        let x = Array4::from_shape_fn([1, 4, 2, 3], |(_, c, y, x)| -1.0 + 0.25 * c as f32 + 0.1 * (x + y) as f32);
        let rgba = to_image(&x, [-1.0, 1.0]);
        assert_eq!(rgba.dimensions(), (3, 2));
        assert_eq!(rgba.get_pixel(0, 0).0, [0, 32, 64]);
        let grey = to_image(&x.slice(ndarray::s![.., 0..1, .., ..]).to_owned(), [-1.0, 1.0]);
        assert_eq!(grey.get_pixel(2, 1).0, [38, 38, 38]);
    }

    #[test]
    fn every_prediction_type_gives_back_the_same_eps() {
        let x_0 = Array4::from_shape_fn([1, 2, 2, 2], |(_, c, y, x)| 0.3 * c as f32 - 0.2 * y as f32 + 0.1 * x as f32);
        let eps = Array4::from_shape_fn([1, 2, 2, 2], |(_, c, y, x)| (c + 2 * y + 3 * x) as f32 * 0.4 - 1.0);
        for alpha_bar in [0.999, 0.5, 4.0e-5] {
            let (a, s) = ((alpha_bar as f32).sqrt(), (1.0 - alpha_bar as f32).sqrt());
            let x_t = &x_0 * a + &(&eps * s);
            let v = &eps * a - &(&x_0 * s);
            for (pred, kind) in [(eps.clone(), Prediction::Epsilon), (v, Prediction::VPrediction), (x_0.clone(), Prediction::Sample)] {
                let got = to_eps(pred, &x_t, alpha_bar, kind);
                let diff = got.iter().zip(eps.iter()).map(|(g, e)| (g - e).abs()).fold(0.0f32, f32::max);
                // x_0 -> eps divides by sigma: exact enough except where sigma is tiny (alpha_bar 0.999)
                assert!(diff < if kind == Prediction::Sample && alpha_bar > 0.9 { 1e-3 } else { 1e-5 }, "{kind:?} at {alpha_bar}: {diff}");
            }
        }
    }
}
