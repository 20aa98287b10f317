//! [`Models`]: the nets of a model directory (`base.onnx`, `mcm.onnx`, and in contract 2
//! `decoder.onnx`, `text_encoder.onnx` + `tokenizer.json`), loaded once and checked against
//! `model.toml`; and the reference nets of `mcm-edge eval` ([`load_segmenter`], [`load_estimator`]).

use std::path::{Path, PathBuf};

use super::backend::{Backend, BackendKind};
use super::checks::ContractMismatch;
use super::error::ModelError;
use super::feed::InputSpec;
use super::memory::{Memory, check_fits};
use super::net::Net;
use super::text::TextEncoder;
use crate::contract::ModelInfo;

/// The nets of a model directory, loaded once.
pub struct Models {
    pub info: ModelInfo,
    pub dir: PathBuf,
    /// `base.onnx`: (sample [1, c, h, w], timestep [1], and in contract 2 encoder_hidden_states
    /// [1, L, D] with `[text]`, timestep_cond [1, Dc] with `[base] timestep_cond`) -> its
    /// prediction [1, c, h, w], named after `[schedule] prediction_type` (eps, v or x_0). c, h, w:
    /// the latent grid with `[latent]`, else the image.
    pub base: Net,
    /// `mcm.onnx`: (sample, eps [1, c, h, w], cond [1, K, H, W] at the image size, timestep [1])
    /// -> gamma, beta [1, c, h, w].
    pub mcm: Option<Net>,
    /// `[latent] decoder`: latent [1, c, h, w] -> image [1, 3, H, W] in the image value range.
    pub decoder: Option<Net>,
    /// `[text]`: the tokenizer and the text encoder.
    pub text: Option<TextEncoder>,
}

impl Models {
    /// Load and check `DIR/model.toml` and the nets it lists with `backend` (the same contract
    /// checks for every backend).
    ///
    /// # Errors
    /// Any [`ModelError`] of the files, naming the file; [`ModelError::Backend`] when the backend
    /// cannot be used; [`ModelError::TooLarge`] when the weights (x the onnxruntime sessions) exceed
    /// this device's memory, before anything is loaded.
    pub fn load(dir: &Path, backend: &Backend) -> Result<Self, ModelError> {
        let info = ModelInfo::load(dir)?;
        if let Some(memory) = Memory::of_this_machine() {
            let copies = if backend.kind == BackendKind::Onnxruntime { backend.concurrency } else { 1 };
            check_fits(dir, &net_files(dir, &info), copies, &memory)?;
        }
        let base = Net::load(&dir.join(&info.base.file), &base_inputs(&info), &[info.schedule.prediction().output()], backend)?;
        let mcm = match &info.mcm {
            Some(m) => Some(Net::load(&dir.join(&m.file), &mcm_inputs(&info), &["gamma", "beta"], backend)?),
            None => None,
        };
        let decoder = match &info.latent {
            Some(l) => Some(Net::load(&dir.join(&l.decoder.file), &decoder_inputs(&info), &["image"], backend)?),
            None => None,
        };
        let text = info.text.as_ref().map(|t| TextEncoder::load(dir, t, backend)).transpose()?;
        Ok(Self { info, dir: dir.to_path_buf(), base, mcm, decoder, text })
    }
}

/// The ONNX files the device loads for `info`: base, MCM, decoder and text encoder (what exists).
fn net_files(dir: &Path, info: &ModelInfo) -> Vec<PathBuf> {
    let mut files = vec![dir.join(&info.base.file)];
    files.extend(info.mcm.as_ref().map(|m| dir.join(&m.file)));
    files.extend(info.latent.as_ref().map(|l| dir.join(&l.decoder.file)));
    files.extend(info.text.as_ref().map(|t| dir.join(&t.file)));
    files
}

/// The inputs of `base.onnx` under `info`: sample and timestep, and the text embedding and
/// LCM's guidance embedding where model.toml declares them.
pub fn base_inputs(info: &ModelInfo) -> Vec<InputSpec> {
    let [c, h, w] = info.sample_shape();
    let mut inputs = vec![InputSpec::float("sample", vec![1, c, h, w]), InputSpec::timestep()];
    if let Some(t) = &info.text {
        inputs.push(InputSpec::float("encoder_hidden_states", vec![1, t.max_length, t.hidden_size]));
    }
    if let Some(dim) = info.base.timestep_cond {
        inputs.push(InputSpec::float("timestep_cond", vec![1, dim]));
    }
    inputs
}

/// The inputs of `mcm.onnx` under `info`: sample and eps on the base's grid, `cond` at the image
/// size (a latent MCM folds it itself), timestep.
pub fn mcm_inputs(info: &ModelInfo) -> Vec<InputSpec> {
    let [c, h, w] = info.sample_shape();
    let (k, s) = (info.cond_channels(), info.image.size);
    vec![
        InputSpec::float("sample", vec![1, c, h, w]),
        InputSpec::float("eps", vec![1, c, h, w]),
        InputSpec::float("cond", vec![1, k, s, s]),
        InputSpec::timestep(),
    ]
}

/// The input of `[latent] decoder`: a latent on the base's grid.
pub fn decoder_inputs(info: &ModelInfo) -> Vec<InputSpec> {
    let [c, h, w] = info.sample_shape();
    vec![InputSpec::float("latent", vec![1, c, h, w])]
}

/// Load `[latent] encoder` of a contract-2 directory (training only; `mcm-edge verify` checks it):
/// image [1, 3, H, W] in the image value range -> latent [1, c, h, w].
///
/// # Errors
/// No `[latent] encoder`, or any [`ModelError`] of the file.
pub fn load_encoder(dir: &Path, info: &ModelInfo, backend: &Backend) -> Result<Net, ModelError> {
    let enc = info.latent.as_ref().and_then(|l| l.encoder.as_ref()).ok_or_else(|| ModelError::Contract {
        path: dir.join("model.toml"),
        source: ContractMismatch::NoEncoder,
    })?;
    let s = info.image.size;
    Net::load(&dir.join(&enc.file), &[InputSpec::float("image", vec![1, 3, s, s])], &["latent"], backend)
}

/// Load the reference segmenter of a model directory (`[segmenter]` in model.toml) with
/// `backend`: image [1, 3, H, W] in the model's value range -> logits [1, classes, H, W], and
/// features [1, F, 1, 1] when `[segmenter] features = F` declares them.
///
/// # Errors
/// No `[segmenter]` section, any [`ModelError`] of the file, and [`ModelError::Backend`] when the
/// backend cannot be used.
pub fn load_segmenter(dir: &Path, info: &ModelInfo, backend: &Backend) -> Result<Net, ModelError> {
    let seg = info
        .segmenter
        .as_ref()
        .ok_or_else(|| ModelError::Contract { path: dir.join("model.toml"), source: ContractMismatch::NoSegmenter })?;
    let s = info.image.size;
    let outputs: &[&str] = if seg.features.is_some() { &["logits", "features"] } else { &["logits"] };
    Net::load(&dir.join(&seg.net.file), &[InputSpec::float("image", vec![1, 3, s, s])], outputs, backend)
}

/// Load the reference estimator of the dense modality `name` (`[estimators.NAME]` in
/// model.toml) with `backend`: image [1, 3, H, W] in the model's value range -> map [1, C, H, W]
/// in the modality's value range.
///
/// # Errors
/// No `[estimators.NAME]` section, any [`ModelError`] of the file, and [`ModelError::Backend`]
/// when the backend cannot be used.
pub fn load_estimator(dir: &Path, info: &ModelInfo, name: &str, backend: &Backend) -> Result<Net, ModelError> {
    let est = info.estimators.get(name).ok_or_else(|| ModelError::Contract {
        path: dir.join("model.toml"),
        source: ContractMismatch::NoEstimator { name: name.to_string() },
    })?;
    let s = info.image.size;
    Net::load(&dir.join(&est.file), &[InputSpec::float("image", vec![1, 3, s, s])], &["map"], backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::IntoTensor;

    /// A copy of the committed `models/tiny` fixture in a fresh temp dir, with `edit` applied to model.toml.
    fn tiny_copy(tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        let dst = std::env::temp_dir().join(format!("mcm-edge-model-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["base.onnx", "mcm.onnx", "segmenter.onnx"] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
        std::fs::write(dst.join("model.toml"), edit(toml)).unwrap();
        dst
    }

    /// f16 is tract's only, and needs fp16 arithmetic unless emulated (the accuracy tools); an
    /// emulated f16 plan runs and stays near f32.
    #[test]
    fn f16_is_refused_for_onnxruntime_and_without_fp16_arithmetic() {
        use crate::runtime::{Precision, has_fp16};
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
        let ort = Backend::onnxruntime(1).with_precision(Precision::F16, true);
        let err = Models::load(&tiny, &ort).err().expect("must refuse").to_string();
        assert!(err.contains("f16") && err.contains("tract"), "{err}");
        let native = Backend::default().with_precision(Precision::F16, false);
        match Models::load(&tiny, &native) {
            Err(e) => assert!(!has_fp16() && e.to_string().contains("fp16 arithmetic") && e.to_string().contains("asimdhp"), "{e}"),
            Ok(_) => assert!(has_fp16(), "f16 loaded on a CPU without fp16 arithmetic"),
        }
        let f16 = Models::load(&tiny, &Backend::default().with_precision(Precision::F16, true)).unwrap();
        let f32 = Models::load(&tiny, &Backend::default()).unwrap();
        assert_eq!(f16.base.backend_description(), "tract, 1 thread, f16");
        let inputs = || vec![ndarray::Array4::<f32>::from_shape_fn([1, 3, 16, 16], |(_, c, y, x)| ((c + y * x) % 7) as f32 / 3.5 - 1.0).into_tensor(), crate::runtime::timestep_tensor(500.0, 1)];
        let (a, b) = (f16.base.run(inputs()).unwrap().remove(0), f32.base.run(inputs()).unwrap().remove(0));
        let worst = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        let scale = b.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        assert!(worst > 0.0 && worst < 0.02 * scale.max(1.0), "f16 vs f32: {worst} (outputs up to {scale})");
    }

    #[test]
    fn loads_the_tiny_fixture() {
        let m = Models::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny"), &Backend::default()).unwrap();
        assert_eq!(m.info.image.size, 16);
        assert!(m.mcm.is_some());
    }

    #[test]
    fn size_mismatch_names_file_tensor_and_shapes() {
        let dir = tiny_copy("size", |t| t.replacen("size = 16", "size = 32", 1));
        let err = Models::load(&dir, &Backend::default()).err().expect("must refuse").to_string();
        assert!(err.contains("base.onnx") && err.contains("sample") && err.contains("32"), "{err}");
    }

    #[test]
    fn cond_channel_mismatch_is_refused() {
        let dir = tiny_copy("cond", |t| t.replace("cond_channels = 13", "cond_channels = 12"));
        let err = Models::load(&dir, &Backend::default()).err().expect("must refuse").to_string();
        assert!(err.contains("model.toml") && err.contains("cond_channels"), "{err}");
    }

    #[test]
    fn image_channels_beyond_four_are_refused_at_load() {
        for channels in [0, 5] {
            let dir = tiny_copy(&format!("channels{channels}"), |t| t.replacen("channels = 3", &format!("channels = {channels}"), 1));
            let err = Models::load(&dir, &Backend::default()).err().expect("must refuse").to_string();
            assert!(err.contains("model.toml") && err.contains(&format!("channels = {channels}")) && err.contains("RGB"), "{err}");
        }
    }

    #[test]
    fn corrupt_onnx_is_refused_with_its_path() {
        let dir = tiny_copy("corrupt", |t| t);
        std::fs::write(dir.join("mcm.onnx"), b"not an onnx file").unwrap();
        let err = Models::load(&dir, &Backend::default()).err().expect("must refuse").to_string();
        assert!(err.contains("mcm.onnx"), "{err}");
    }

    #[test]
    fn missing_key_is_refused() {
        let dir = tiny_copy("key", |t| t.replace("num_train_timesteps = 1000\n", ""));
        let err = Models::load(&dir, &Backend::default()).err().expect("must refuse").to_string();
        assert!(err.contains("num_train_timesteps"), "{err}");
    }
}
