//! `model.toml`: the contract between `mcm-train` and the device (README "Model contract").
//!
//! Parsed with serde; every check that can be made without loading the ONNX files is made here,
//! so that a bad file is refused at start with a message naming the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or checking `model.toml`; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelTomlError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A key is missing or mistyped (the message names it).
    #[error("{path}: invalid model.toml: {message}")]
    Toml { path: PathBuf, message: String },
    /// The values disagree with each other or with what the device supports.
    #[error("{path}: {source}")]
    Contract { path: PathBuf, source: ContractViolation },
}

/// A `model.toml` whose values break the contract (README "Model contract").
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractViolation {
    /// `format` is neither 1 nor 2.
    #[error("format {0} is not supported (expected 1, or 2 for latent and text-conditional models)")]
    Format(u32),
    /// A section of contract 2 (`[latent]`, `[text]`, a sampler other than DDIM) in a format 1 file.
    #[error("{0} needs format = 2")]
    NeedsFormat2(&'static str),
    /// `[latent]` whose channels, downsampling or scaling factor is 0, or whose downsampling does
    /// not divide the image size.
    #[error("[latent] channels = {channels}, downsampling = {downsampling} (image size {size}), scaling_factor = {scaling_factor}: \
             expected positive values and a downsampling that divides the image size")]
    Latent { channels: usize, downsampling: usize, size: usize, scaling_factor: f32 },
    /// `[text]` with a zero max_length or hidden_size.
    #[error("[text] max_length = {max_length}, hidden_size = {hidden_size}: both must be positive")]
    Text { max_length: usize, hidden_size: usize },
    /// `[schedule]` timestep_spacing unknown, or not one the sampler uses.
    #[error("[schedule] timestep_spacing {spacing:?} with sampler {sampler:?}: expected \"leading\", \"trailing\" or \"linspace\" (\"lcm\" with the lcm sampler)")]
    Spacing { spacing: String, sampler: String },
    /// The lcm sampler without its settings.
    #[error("[schedule] sampler \"lcm\" needs original_inference_steps (1..=num_train_timesteps) and timestep_scaling")]
    LcmSettings,
    /// `[image]` size is 0.
    #[error("[image] size must be positive")]
    EmptyImage,
    /// `[image]` channels outside 1..=4: the device writes its images as RGB PNGs from 1 (grey)
    /// to 4 channels (see `diffusion::to_image`).
    #[error("[image] channels = {0}: the device turns 1 to 4 image channels into RGB images, not {0}")]
    ImageChannels(usize),
    /// `[image]` value_range is not increasing.
    #[error("[image] value_range {0:?} must be increasing")]
    ValueRange([f32; 2]),
    /// `[schedule]` prediction_type is none of the three the device converts to eps.
    #[error("[schedule] prediction_type {0:?}: expected \"epsilon\", \"v_prediction\" or \"sample\"")]
    PredictionType(String),
    /// `[schedule]` timesteps (a distilled base's grid) is empty, not strictly decreasing or not below T.
    #[error("[schedule] timesteps {0:?}: expected a strictly decreasing list of timesteps below num_train_timesteps")]
    Timesteps(Vec<usize>),
    /// A segmentation whose channel count differs from its class count.
    #[error("modality {name:?}: {channels} channels but {classes} classes")]
    ClassCount { name: String, channels: usize, classes: usize },
    /// A sketch with more or fewer than one channel.
    #[error("modality {name:?}: a sketch has 1 channel, not {channels}")]
    SketchChannels { name: String, channels: usize },
    /// A dense map with other than 1 to 4 channels.
    #[error("modality {name:?}: a dense map has 1 to 4 channels, not {channels}")]
    DenseChannels { name: String, channels: usize },
    /// A dense map whose value_range is not increasing.
    #[error("modality {name:?}: value_range {range:?} must be increasing")]
    ModalityValueRange { name: String, range: [f32; 2] },
    /// An `[estimators.NAME]` whose NAME is not a dense modality of the model.
    #[error("[estimators.{0}]: the model has no dense modality {0:?}")]
    EstimatorModality(String),
    /// `[mcm]` cond_channels differs from what the modalities need.
    #[error("[mcm] cond_channels = {declared} but the modalities need {needed} (channels + 1 presence each)")]
    CondChannels { declared: usize, needed: usize },
}

/// The whole `model.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelInfo {
    /// Format version of the file: 1 (pixel space, unconditional base) or 2 (adds `[latent]`,
    /// `[text]` and the samplers of imported diffusers pipelines).
    pub format: u32,
    pub image: ImageInfo,
    pub schedule: ScheduleInfo,
    pub base: NetInfo,
    /// Format 2: the base denoises latents, which `decoder.onnx` turns into the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<LatentInfo>,
    /// Format 2: the base takes a prompt's text embedding (`encoder_hidden_states`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextInfo>,
    /// Absent for a base without an MCM (then only strength 0 is possible).
    pub mcm: Option<McmInfo>,
    /// Modalities in `cond` order.
    #[serde(default)]
    pub modalities: Vec<ModalityInfo>,
    /// Reference segmenter used by `mcm-edge eval`.
    pub segmenter: Option<SegmenterInfo>,
    /// Reference estimators of dense modalities used by `mcm-edge eval`, by modality name
    /// (`[estimators.depth]`: `image` [B, 3, H, W] in [-1, 1] -> `map` [B, C, H, W]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub estimators: BTreeMap<String, NetInfo>,
}

/// `[image]`: the generated image.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageInfo {
    /// Height = width in pixels.
    pub size: usize,
    /// Channels C (3 for RGB).
    pub channels: usize,
    /// Pixel values of `x_0` that map to 0 and 255, e.g. `[-1.0, 1.0]`.
    pub value_range: [f32; 2],
}

/// `[schedule]`: the DDPM noise schedule the base was trained with (diffusers' names).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ScheduleInfo {
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    pub beta_schedule: String,
    pub beta_start: f64,
    pub beta_end: f64,
    /// T: timesteps are `0..T`.
    pub num_train_timesteps: usize,
    /// What the base predicts: `epsilon`, `v_prediction` (v = alpha eps - sigma x_0) or `sample`
    /// (x_0); the sampler converts it to eps ([`Prediction`]). `base.onnx`'s output is named
    /// after it ([`Prediction::output`]).
    pub prediction_type: String,
    /// The timestep grid a distilled base was trained for, noisiest first (`mcm-train distill`):
    /// the sampler uses exactly these, and only their count of steps. Absent: any step count, on
    /// the grid of `timestep_spacing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<usize>>,
    /// The sampler (format 2; format 1 is always DDIM): `ddim`, `euler` (diffusers'
    /// EulerDiscreteScheduler, deterministic: DDIM stepping to the next grid timestep) or `lcm`
    /// (Latent Consistency Models' multistep sampler, Luo et al. 2023, Alg. 1).
    #[serde(default)]
    pub sampler: SamplerKind,
    /// How a step count becomes timesteps (diffusers' `timestep_spacing`; Lin et al. 2024,
    /// Table 2): `leading`, `trailing` or `linspace`, or `lcm` for the lcm sampler. Absent:
    /// `trailing` (format 1's only grid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<String>,
    /// Added to `leading` timesteps (diffusers' `steps_offset`; Stable Diffusion uses 1).
    #[serde(default)]
    pub steps_offset: usize,
    /// DDIM's alpha_bar after the last step: 1 when true, alpha_bar_0 when false (diffusers'
    /// `set_alpha_to_one`). Absent: true.
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    /// Format 2: predicted x_0 is clipped to `[-r, r]` (diffusers' `clip_sample_range`); absent:
    /// no clipping. Format 1 always clips x_0 to the image's value range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f32>,
    /// lcm: the distillation grid's step count (LCMScheduler's `original_inference_steps`, 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_inference_steps: Option<usize>,
    /// lcm: the boundary condition's timestep scaling (LCMScheduler's `timestep_scaling`, 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_scaling: Option<f64>,
}

fn yes() -> bool {
    true
}

/// The sampler of a model (`[schedule] sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// DDIM (Song et al. 2021, Eq. 12), stepping to `t - T / steps` as diffusers' DDIMScheduler.
    #[default]
    Ddim,
    /// Euler on the probability-flow ODE (diffusers' EulerDiscreteScheduler without churn), which
    /// is DDIM with eta 0 stepping to the next timestep of the grid, and to alpha_bar = 1 at the end.
    Euler,
    /// The multistep consistency sampler of Latent Consistency Models (Luo et al. 2023, Alg. 1;
    /// diffusers' LCMScheduler).
    Lcm,
}

impl SamplerKind {
    /// The sampler's name in model.toml.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Ddim => "ddim",
            SamplerKind::Euler => "euler",
            SamplerKind::Lcm => "lcm",
        }
    }
}

/// `[latent]` (format 2): the latent space the base denoises in.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LatentInfo {
    /// Latent channels c (4 for Stable Diffusion's VAE and TAESD).
    pub channels: usize,
    /// Image pixels per latent cell along each axis (8): latents are `[1, c, size / f, size / f]`.
    pub downsampling: usize,
    /// The VAE's `scaling_factor` (0.18215 for SD 1.x, 1.0 for TAESD): the base sees latents
    /// times it, `decoder.onnx` divides it out itself.
    pub scaling_factor: f32,
    /// The autoencoder class it came from (`AutoencoderKL`, `AutoencoderTiny`), for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    /// `decoder.onnx`: `latent` f32 [B, c, h, w] (scaled) -> `image` f32 [B, 3, H, W] in the image value range.
    pub decoder: NetInfo,
    /// `encoder.onnx` (training only): `image` -> `latent` (the posterior mean, scaled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<NetInfo>,
}

/// `[text]` (format 2): the prompt's text encoder and tokenizer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TextInfo {
    /// `text_encoder.onnx`: `input_ids` int64 [B, L] -> `last_hidden_state` f32 [B, L, D].
    pub file: String,
    /// The tokenizer in Hugging Face `tokenizers` format (`tokenizer.json`).
    pub tokenizer: String,
    /// L: prompts are truncated and padded to this many tokens (77 for CLIP).
    pub max_length: usize,
    /// D: the width of the embedding (the U-Net's cross_attention_dim).
    pub hidden_size: usize,
    /// The id prompts are padded with (CLIP's end token for SD 1.x).
    pub pad_token_id: u32,
    /// The model's usual classifier-free guidance scale (7.5 for SD 1.x, 8.5 for LCM, 0 for
    /// SD-Turbo), used when neither the request nor `[generation]` gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f32>,
    pub parameters: Option<u64>,
    /// Multiply-adds x 2 of one run at batch 1, as tract estimates them (`mcm-edge info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<u64>,
}

/// What a base predicts, from `[schedule] prediction_type` (diffusers' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise eps.
    Epsilon,
    /// v = alpha eps - sigma x_0 (Salimans & Ho 2022, Sec. 4).
    VPrediction,
    /// x_0 itself.
    Sample,
}

impl Prediction {
    /// The prediction type named `name`, if the device knows it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "epsilon" => Some(Self::Epsilon),
            "v_prediction" => Some(Self::VPrediction),
            "sample" => Some(Self::Sample),
            _ => None,
        }
    }

    /// The name of `base.onnx`'s output for this prediction (the trainer's `PREDICTION_OUTPUTS`).
    pub fn output(self) -> &'static str {
        match self {
            Self::Epsilon => "eps",
            Self::VPrediction => "v",
            Self::Sample => "x_0",
        }
    }
}

impl ScheduleInfo {
    /// The checked prediction type (`ModelInfo::load` refuses unknown ones).
    pub fn prediction(&self) -> Prediction {
        Prediction::from_name(&self.prediction_type).unwrap_or(Prediction::Epsilon)
    }
}

/// `[base]` or `[segmenter]`: an ONNX file and its provenance.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NetInfo {
    /// File name relative to the model directory.
    pub file: String,
    pub parameters: Option<u64>,
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub wall_time_s: Option<f64>,
    pub dataset: Option<String>,
    /// Multiply-adds x 2 of one run at batch 1 (one sampling step for a base), as tract estimates
    /// them (`mcm-edge info --write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<u64>,
    /// A base only: FLOPs of one sampling step (its passes at the model's guidance scale, and the
    /// MCM), as `mcm-edge info` computes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_per_step: Option<u64>,
    /// A base only: the width of LCM's guidance embedding, its `timestep_cond` input `[B, Dc]`
    /// (diffusers' `time_cond_proj_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_cond: Option<usize>,
}

/// `[segmenter]`: the reference segmenter (`image` [B, 3, H, W] in the image value range ->
/// `logits` [B, classes, H, W], and with `features`, `features` [B, F, 1, 1]: its pooled bottleneck,
/// the embedding of the realism figure `fsd` of `mcm-edge eval`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SegmenterInfo {
    /// The file and its provenance, as for every net.
    #[serde(flatten)]
    pub net: NetInfo,
    /// F, the width of the `features` output; absent in files written before it (then eval has
    /// no fsd: `mcm-train segmenter --init-from DIR --steps 0` writes the file again with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<usize>,
}

/// `[mcm]`: the conditioning module.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct McmInfo {
    pub file: String,
    /// K, channels of `cond`; must equal the sum over modalities of `channels + 1`.
    pub cond_channels: usize,
    pub parameters: Option<u64>,
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub wall_time_s: Option<f64>,
}

/// What kind of map a modality is; decides decoding and the `cond` encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModalityKind {
    /// Class map: one-hot over `channels` classes.
    Segmentation,
    /// Edge / stroke map: one channel in `[0, 1]`, 1 on a stroke.
    Sketch,
    /// Continuous map (depth, normals, heatmaps): 1 to 4 channels with values in `value_range`.
    Dense,
}

impl ModalityKind {
    /// The kind's name in model.toml.
    pub fn name(self) -> &'static str {
        match self {
            ModalityKind::Segmentation => "segmentation",
            ModalityKind::Sketch => "sketch",
            ModalityKind::Dense => "dense",
        }
    }
}

/// One `[[modalities]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModalityInfo {
    /// Name used in topics (`frame/<name>`) and in request `frames` keys.
    pub name: String,
    pub kind: ModalityKind,
    /// Map channels (number of classes for a segmentation, 1 for a sketch, 1-4 for a dense map);
    /// a presence channel follows.
    pub channels: usize,
    /// Class list of a segmentation (id = index).
    #[serde(default)]
    pub classes: Vec<ClassInfo>,
    /// `[lo, hi]` of a dense map's values in `cond` (a frame's 0 maps to lo, its maximum, 255 or
    /// 65535, to hi); [0, 1] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_range: Option<[f32; 2]>,
}

/// A segmentation class and its palette colour.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct ClassInfo {
    pub name: String,
    /// RGB, 0-255.
    pub color: [u8; 3],
}

impl ModelInfo {
    /// Read and check `DIR/model.toml`.
    ///
    /// # Errors
    /// [`ModelTomlError::Io`] when unreadable, [`ModelTomlError::Toml`] when a key is missing or
    /// mistyped, [`ModelTomlError::Contract`] when values disagree (cond channels, classes,
    /// schedule kind).
    pub fn load(dir: &Path) -> Result<Self, ModelTomlError> {
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelTomlError::Io { path: path.clone(), source })?;
        let info: ModelInfo =
            toml::from_str(&text).map_err(|e| ModelTomlError::Toml { path: path.clone(), message: e.to_string() })?;
        info.check().map_err(|source| ModelTomlError::Contract { path, source })?;
        Ok(info)
    }

    fn check(&self) -> Result<(), ContractViolation> {
        if !(1..=2).contains(&self.format) {
            return Err(ContractViolation::Format(self.format));
        }
        self.check_format_2()?;
        if self.image.size == 0 {
            return Err(ContractViolation::EmptyImage);
        }
        if !(1..=4).contains(&self.image.channels) {
            return Err(ContractViolation::ImageChannels(self.image.channels));
        }
        if self.image.value_range[0] >= self.image.value_range[1] {
            return Err(ContractViolation::ValueRange(self.image.value_range));
        }
        if Prediction::from_name(&self.schedule.prediction_type).is_none() {
            return Err(ContractViolation::PredictionType(self.schedule.prediction_type.clone()));
        }
        if let Some(ts) = &self.schedule.timesteps
            && (ts.is_empty() || ts.windows(2).any(|w| w[1] >= w[0]) || ts[0] >= self.schedule.num_train_timesteps)
        {
            return Err(ContractViolation::Timesteps(ts.clone()));
        }
        self.modalities.iter().try_for_each(ModalityInfo::check)?;
        if let Some(name) =
            self.estimators.keys().find(|n| self.modality(n).is_none_or(|m| m.kind != ModalityKind::Dense))
        {
            return Err(ContractViolation::EstimatorModality(name.clone()));
        }
        if let Some(mcm) = &self.mcm
            && mcm.cond_channels != self.cond_channels()
        {
            return Err(ContractViolation::CondChannels { declared: mcm.cond_channels, needed: self.cond_channels() });
        }
        Ok(())
    }

    /// The sections of contract 2: only in format 2, and self-consistent.
    fn check_format_2(&self) -> Result<(), ContractViolation> {
        let s = &self.schedule;
        if self.format == 1 {
            let extra = [
                (self.latent.is_some(), "[latent]"),
                (self.text.is_some(), "[text]"),
                (s.sampler != SamplerKind::Ddim, "[schedule] sampler"),
                (self.base.timestep_cond.is_some(), "[base] timestep_cond"),
            ];
            if let Some((_, what)) = extra.iter().find(|(present, _)| *present) {
                return Err(ContractViolation::NeedsFormat2(what));
            }
        }
        if let Some(l) = &self.latent
            && (l.channels == 0 || l.downsampling == 0 || !self.image.size.is_multiple_of(l.downsampling) || !l.scaling_factor.is_finite() || l.scaling_factor <= 0.0)
        {
            return Err(ContractViolation::Latent { channels: l.channels, downsampling: l.downsampling, size: self.image.size, scaling_factor: l.scaling_factor });
        }
        if let Some(t) = &self.text
            && (t.max_length == 0 || t.hidden_size == 0)
        {
            return Err(ContractViolation::Text { max_length: t.max_length, hidden_size: t.hidden_size });
        }
        let spacing = s.timestep_spacing.as_deref().unwrap_or("trailing");
        let known = match s.sampler {
            SamplerKind::Lcm => spacing == "lcm",
            SamplerKind::Ddim | SamplerKind::Euler => ["leading", "trailing", "linspace"].contains(&spacing),
        };
        if !known || (self.format == 1 && spacing != "trailing") {
            return Err(ContractViolation::Spacing { spacing: spacing.to_string(), sampler: s.sampler.name().to_string() });
        }
        if s.sampler == SamplerKind::Lcm
            && (s.timestep_scaling.is_none() || s.original_inference_steps.is_none_or(|n| n == 0 || n > s.num_train_timesteps))
        {
            return Err(ContractViolation::LcmSettings);
        }
        Ok(())
    }

    /// The shape `[C, h, w]` of what the base denoises: the latent grid with `[latent]`, else the image.
    pub fn sample_shape(&self) -> [usize; 3] {
        match &self.latent {
            Some(l) => [l.channels, self.image.size / l.downsampling, self.image.size / l.downsampling],
            None => [self.image.channels, self.image.size, self.image.size],
        }
    }

    /// K: channels of `cond`, the sum of `channels + 1` over the modalities.
    pub fn cond_channels(&self) -> usize {
        self.modalities.iter().map(|m| m.channels + 1).sum()
    }

    /// The modality called `name`, if the model has it.
    pub fn modality(&self, name: &str) -> Option<&ModalityInfo> {
        self.modalities.iter().find(|m| m.name == name)
    }
}

impl ModalityInfo {
    /// The channel rules of its kind.
    fn check(&self) -> Result<(), ContractViolation> {
        match self.kind {
            ModalityKind::Segmentation if self.classes.len() != self.channels => Err(ContractViolation::ClassCount {
                name: self.name.clone(),
                channels: self.channels,
                classes: self.classes.len(),
            }),
            ModalityKind::Sketch if self.channels != 1 => {
                Err(ContractViolation::SketchChannels { name: self.name.clone(), channels: self.channels })
            }
            ModalityKind::Dense if !(1..=4).contains(&self.channels) => {
                Err(ContractViolation::DenseChannels { name: self.name.clone(), channels: self.channels })
            }
            ModalityKind::Dense if self.value_range()[0].partial_cmp(&self.value_range()[1]) != Some(std::cmp::Ordering::Less) => {
                Err(ContractViolation::ModalityValueRange { name: self.name.clone(), range: self.value_range() })
            }
            ModalityKind::Segmentation | ModalityKind::Sketch | ModalityKind::Dense => Ok(()),
        }
    }

    /// `[lo, hi]` of a dense map's values ([0, 1] unless model.toml says otherwise).
    pub fn value_range(&self) -> [f32; 2] {
        self.value_range.unwrap_or([0.0, 1.0])
    }
}
