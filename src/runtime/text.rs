//! [`TextEncoder`]: a text-conditional model's prompt path (contract 2, `[text]`): the Hugging Face
//! tokenizer of `tokenizer.json` (the `tokenizers` crate, no Python) and `text_encoder.onnx`.

use std::path::{Path, PathBuf};

use ndarray::{Array3, Ix3};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tract_onnx::prelude::{IntoTensor, tract_ndarray};

use super::backend::Backend;
use super::error::ModelError;
use super::feed::InputSpec;
use super::net::Net;
use crate::contract::TextInfo;

/// The tokenizer and text encoder of a model directory, loaded once.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    /// `text_encoder.onnx`: `input_ids` [1, L] -> `last_hidden_state` [1, L, D].
    pub net: Net,
    pub info: TextInfo,
}

impl TextEncoder {
    /// Load `DIR/[text] tokenizer` (truncating and padding every prompt to `max_length` with
    /// `pad_token_id`, as diffusers' pipelines tokenize) and `DIR/[text] file` with `backend`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when tokenizer.json cannot be read or set up, and any
    /// [`ModelError`] of the text encoder's file.
    pub fn load(dir: &Path, info: &TextInfo, backend: &Backend) -> Result<Self, ModelError> {
        let tokenizer_path = dir.join(&info.tokenizer);
        let err = |message: String| ModelError::Tokenizer { path: tokenizer_path.clone(), message };
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| err(e.to_string()))?;
        let pad_token = tokenizer.id_to_token(info.pad_token_id).ok_or_else(|| err(format!("[text] pad_token_id {} is not in its vocabulary", info.pad_token_id)))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: info.max_length, ..Default::default() }))
            .map_err(|e| err(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::Fixed(info.max_length), pad_id: info.pad_token_id, pad_token, ..Default::default() }));
        let outputs = ["last_hidden_state"];
        let net = Net::load(&dir.join(&info.file), &[InputSpec::token_ids("input_ids", info.max_length)], &outputs, backend)?;
        Ok(Self { tokenizer, tokenizer_path, net, info: info.clone() })
    }

    /// The token ids of `prompt`: exactly `max_length` of them, with the tokenizer's start and end
    /// tokens, truncated and padded.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the tokenizer fails on it.
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<i64>, ModelError> {
        let encoding = self.tokenizer.encode(prompt, true).map_err(|e| ModelError::Tokenizer { path: self.tokenizer_path.clone(), message: e.to_string() })?;
        Ok(encoding.get_ids().iter().map(|&id| id as i64).collect())
    }

    /// The text embedding of `prompt`, `[1, L, D]` (the encoder's `last_hidden_state`).
    ///
    /// # Errors
    /// Tokenizer or inference failures, or an output of another shape than `[1, L, D]`.
    pub fn embed(&self, prompt: &str) -> Result<Array3<f32>, ModelError> {
        let ids = tract_ndarray::Array2::from_shape_vec((1, self.info.max_length), self.token_ids(prompt)?)
            .map_err(|e| ModelError::Tokenizer { path: self.tokenizer_path.clone(), message: format!("{e}") })?;
        let out = self.net.run_dyn(&[ids.into_tensor()])?.remove(0);
        let shape = out.shape().to_vec();
        out.into_dimensionality::<Ix3>()
            .ok()
            .filter(|a| a.dim() == (1, self.info.max_length, self.info.hidden_size))
            .ok_or_else(|| ModelError::Tract {
                path: self.net.path().to_path_buf(),
                message: format!("last_hidden_state is {shape:?}, model.toml needs [1, {}, {}]", self.info.max_length, self.info.hidden_size),
            })
    }
}
