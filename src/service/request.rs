//! Requests on `P/request` (README "MQTT interface"): JSON
//! `{"id", "frames": {modality: base64 PNG/JPEG}, "seed"?, "steps"?, "strength"?, "prompt"?,
//! "negative_prompt"?, "guidance_scale"?}`, parsed and checked against the model and the
//! configured limits. Every refusal carries the request id
//! when it could be read, an error code and a message.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use crate::contract::{Maps, ModelInfo};
use crate::diffusion::{TextParamError, TextParams};
use crate::error_code::ErrorCode;
use crate::frames::{FrameLimits, decode_frame};
use crate::mqtt::topic_text_ok;

/// Longest request id, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A refused request: the id when known, an error code and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The request id, when it could be read.
    pub id: Option<String>,
    /// Error code, e.g. [`ErrorCode::InvalidSteps`] (README "MQTT interface").
    pub code: ErrorCode,
    /// Human-readable reason, naming the field.
    pub message: String,
}

impl Refusal {
    /// A refusal of the request `id` (when known).
    pub fn new(id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { id: id.map(str::to_string), code, message: message.into() }
    }
}

/// The JSON of a request, with a checked id but frames still base64.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// 1..=[`MAX_ID_CHARS`] characters, no `/`, `+`, `#` or what [`topic_text_ok`] refuses (it
    /// ends the topic `image/<id>`).
    pub id: String,
    #[serde(default)]
    frames: BTreeMap<String, String>,
    seed: Option<u64>,
    steps: Option<i64>,
    strength: Option<f64>,
    prompt: Option<String>,
    negative_prompt: Option<String>,
    guidance_scale: Option<f64>,
}

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct RequestRules<'a> {
    /// The loaded model (modalities, image size, training timesteps).
    pub info: &'a ModelInfo,
    /// Frame size limits (bytes before decoding, pixels).
    pub frames: FrameLimits,
    /// Largest `steps` (also capped by the model's training timesteps).
    pub max_steps: usize,
    /// Largest `strength`.
    pub max_strength: f32,
    /// `steps` when the request does not give it: [`crate::config::GenerationConfig::steps_for`]
    /// the model (its distilled count, else `[generation] steps`).
    pub default_steps: usize,
    /// `strength` when the request does not give it.
    pub default_strength: f32,
    /// The prompt settings when the request does not give them (`[generation] prompt`,
    /// `negative_prompt`, `guidance_scale`); used only for a model with text.
    pub default_text: &'a TextParams,
}

/// A checked request with its frames decoded to maps of the model's size.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request id (checked as in [`parse_body`]).
    pub id: String,
    /// Decoded maps by modality name.
    pub maps: Maps,
    /// `None`: the service's seed policy decides.
    pub seed: Option<u64>,
    /// DDIM steps, 1..=max_steps; a distilled model's own count (its default too).
    pub steps: usize,
    /// Conditioning strength, 0..=max_strength.
    pub strength: f32,
    /// The prompt of a text-conditional model (the config's defaults where the request gives none).
    pub text: TextParams,
}

/// Parse the JSON and check the id (cheap: frames are not decoded yet).
///
/// # Errors
/// `invalid_json` (not JSON), `invalid_request` (not an object, unknown or mistyped field),
/// `invalid_id`.
pub fn parse_body(payload: &[u8]) -> Result<RequestBody, Refusal> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Refusal::new(None, ErrorCode::InvalidJson, format!("request is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Refusal::new(None, ErrorCode::InvalidRequest, "request must be a JSON object"));
    }
    let raw_id = value.get("id").and_then(serde_json::Value::as_str).map(str::to_string);
    let body: RequestBody = serde_json::from_value(value)
        .map_err(|e| Refusal::new(raw_id.as_deref(), ErrorCode::InvalidRequest, format!("invalid request: {e}")))?;
    let id = body.id.as_str();
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(Refusal::new(Some(id), ErrorCode::InvalidId, format!("id must have 1..={MAX_ID_CHARS} characters, not {chars}")));
    }
    if id.contains(['/', '+', '#']) || !topic_text_ok(id) {
        return Err(Refusal::new(
            Some(id),
            ErrorCode::InvalidId,
            "id must not contain '/', '+', '#', control characters or non-characters (it is the last level of the topic image/<id>)",
        ));
    }
    Ok(body)
}

impl RequestBody {
    /// Check the parameters against `rules` and decode the frames.
    ///
    /// # Errors
    /// `no_frames` (none, and no prompt for a text model), `unknown_modality`, `invalid_steps`,
    /// `invalid_strength`, `invalid_prompt`, `invalid_guidance_scale`, `frame_too_large`,
    /// `invalid_base64`, or the frame decoder's code ([`crate::frames::FrameError::code`]).
    pub fn check(self, rules: &RequestRules<'_>) -> Result<Request, Refusal> {
        let id = self.id.as_str();
        let refuse = |code: ErrorCode, message: String| Refusal::new(Some(id), code, message);
        let info = rules.info;
        let names = || format!("{:?}", info.modalities.iter().map(|m| m.name.as_str()).collect::<Vec<_>>());
        let text = self.text(rules).map_err(|(code, message)| refuse(code, message))?;
        if self.frames.is_empty() && text.prompt.is_empty() {
            let or_prompt = if info.text.is_some() { " or a prompt" } else { "" };
            return Err(refuse(ErrorCode::NoFrames, format!("frames is empty; give at least one of {}{or_prompt}", names())));
        }
        let max_steps = rules.max_steps.min(info.schedule.num_train_timesteps);
        let distilled = info.schedule.timesteps.as_ref().map(Vec::len);
        let steps = match (self.steps, distilled) {
            (None, _) => rules.default_steps.min(max_steps),
            (Some(s), Some(n)) if s == n as i64 => n,
            (Some(s), Some(n)) => {
                return Err(refuse(ErrorCode::InvalidSteps, format!("steps {s}: this model was distilled for {n} steps only")));
            }
            (Some(s), None) if s >= 1 && s <= max_steps as i64 => s as usize,
            (Some(s), None) => return Err(refuse(ErrorCode::InvalidSteps, format!("steps {s} must be within 1..={max_steps}"))),
        };
        let strength = match self.strength {
            None => rules.default_strength,
            Some(s) if s.is_finite() && s >= 0.0 && s <= f64::from(rules.max_strength) => s as f32,
            Some(s) => return Err(refuse(ErrorCode::InvalidStrength, format!("strength {s} must be within 0..={}", rules.max_strength))),
        };
        let mut maps = Maps::new();
        for (name, b64) in &self.frames {
            let Some(modality) = info.modality(name) else {
                return Err(refuse(ErrorCode::UnknownModality, format!("frames.{name}: unknown modality; the model has {}", names())));
            };
            let b64 = strip_data_url(b64).trim();
            // A base64 text longer than 4/3 of the limit cannot decode within it.
            let approx = b64.len() / 4 * 3;
            if approx > rules.frames.max_bytes + 3 {
                let limit = rules.frames.max_bytes;
                return Err(refuse(ErrorCode::FrameTooLarge, format!("frames.{name}: about {approx} bytes, the limit is {limit}")));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| refuse(ErrorCode::InvalidBase64, format!("frames.{name}: not base64: {e}")))?;
            let map = decode_frame(&bytes, modality, info.image.size, &rules.frames)
                .map_err(|e| refuse(e.code(), format!("frames.{name}: {e}")))?;
            maps.insert(name.clone(), map);
        }
        Ok(Request { id: self.id, maps, seed: self.seed, steps, strength, text })
    }

    /// The prompt settings: the request's, else the config's for a model with text; a prompt
    /// or guidance scale for a model without text is refused.
    fn text(&self, rules: &RequestRules<'_>) -> Result<TextParams, (ErrorCode, String)> {
        if rules.info.text.is_none() {
            if self.prompt.is_some() || self.negative_prompt.is_some() {
                return Err((ErrorCode::InvalidPrompt, "this model takes no prompt (it has no text encoder)".into()));
            }
            if self.guidance_scale.is_some() {
                return Err((ErrorCode::InvalidGuidanceScale, "guidance_scale: this model takes no prompt (it has no text encoder)".into()));
            }
            return Ok(TextParams::default());
        }
        let invalid = |e: TextParamError| {
            let code = match e {
                TextParamError::PromptTooLong { .. } => ErrorCode::InvalidPrompt,
                TextParamError::GuidanceScale(_) => ErrorCode::InvalidGuidanceScale,
            };
            (code, e.to_string())
        };
        for (field, p) in [("prompt", &self.prompt), ("negative_prompt", &self.negative_prompt)] {
            TextParams::check_prompt(field, p.as_deref().unwrap_or("")).map_err(invalid)?;
        }
        let guidance_scale = match self.guidance_scale {
            None => rules.default_text.guidance_scale,
            Some(g) => Some(TextParams::check_guidance_scale(g).map_err(invalid)?),
        };
        let or_default = |p: &Option<String>, d: &str| p.clone().unwrap_or_else(|| d.to_string());
        Ok(TextParams {
            prompt: or_default(&self.prompt, &rules.default_text.prompt),
            negative_prompt: or_default(&self.negative_prompt, &rules.default_text.negative_prompt),
            guidance_scale,
        })
    }
}

/// `data:image/png;base64,AAAA` -> `AAAA`; anything else unchanged.
fn strip_data_url(s: &str) -> &str {
    if s.starts_with("data:")
        && let Some((_, data)) = s.split_once(";base64,")
    {
        return data;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `models/tiny-v` fixture: a base standing in for a 4-step distilled student.
    fn distilled() -> ModelInfo {
        ModelInfo::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-v")).unwrap()
    }

    fn check(info: &ModelInfo, steps: Option<i64>) -> Result<Request, Refusal> {
        let sketch = {
            let mut png = std::io::Cursor::new(Vec::new());
            image::GrayImage::from_pixel(16, 16, image::Luma([255])).write_to(&mut png, image::ImageFormat::Png).unwrap();
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png.into_inner())
        };
        let body = RequestBody {
            id: "r".into(),
            frames: [("sketch".into(), sketch)].into(),
            seed: None,
            steps,
            strength: None,
            prompt: None,
            negative_prompt: None,
            guidance_scale: None,
        };
        let rules = RequestRules {
            info,
            frames: FrameLimits::default(),
            max_steps: 50,
            max_strength: 3.0,
            default_steps: crate::config::GenerationConfig::default().steps_for(info),
            default_strength: 1.5,
            default_text: &TextParams::default(),
        };
        body.check(&rules)
    }

    #[test]
    fn a_distilled_model_takes_its_own_step_count_by_default_and_refuses_others() {
        let info = distilled();
        assert_eq!(check(&info, None).unwrap().steps, 4, "the model's count, not [generation]'s 20");
        assert_eq!(check(&info, Some(4)).unwrap().steps, 4);
        let refused = check(&info, Some(20)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidSteps);
        assert!(refused.message.contains("distilled for 4 steps only"), "{}", refused.message);
    }

    #[test]
    fn a_model_without_text_refuses_prompt_fields_by_name() {
        let info = distilled();
        let rules = |text| RequestRules {
            info: &info,
            frames: FrameLimits::default(),
            max_steps: 50,
            max_strength: 3.0,
            default_steps: 4,
            default_strength: 1.0,
            default_text: text,
        };
        let defaults = TextParams::default();
        for (json, code) in [(r#"{"id":"p","prompt":"a lake","frames":{}}"#, ErrorCode::InvalidPrompt), (r#"{"id":"g","guidance_scale":3,"frames":{}}"#, ErrorCode::InvalidGuidanceScale)] {
            let refused = parse_body(json.as_bytes()).unwrap().check(&rules(&defaults)).unwrap_err();
            assert_eq!(refused.code, code, "{json}: {}", refused.message);
            assert!(refused.message.contains("takes no prompt"), "{}", refused.message);
        }
    }
}
