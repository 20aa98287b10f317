//! [`ErrorCode`]: every code that goes out in the `code` field of the `P/error` topic (README
//! "MQTT interface", "Error codes").

use serde::Serialize;

/// The short snake_case code of an answer on `P/error`, serialized as its [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A request that is not JSON.
    InvalidJson,
    /// A request that is not an object, or has an unknown or mistyped field.
    InvalidRequest,
    /// A request id that is empty, too long or not usable in a topic.
    InvalidId,
    /// A request without frames.
    NoFrames,
    /// A frame (request key or `frame/<modality>` topic) of a modality the model does not have.
    UnknownModality,
    /// A request frame that is not base64.
    InvalidBase64,
    /// A request `steps` out of range.
    InvalidSteps,
    /// A request `strength` out of range.
    InvalidStrength,
    /// A request `prompt` or `negative_prompt` for a model without text, or too long.
    InvalidPrompt,
    /// A request `guidance_scale` out of range, or for a model without text.
    InvalidGuidanceScale,
    /// A frame of 0 bytes.
    EmptyFrame,
    /// A frame above `limits.max_payload_bytes`.
    FrameTooLarge,
    /// A frame whose header declares more than `limits.max_pixels` pixels.
    TooManyPixels,
    /// A frame whose decoding would need more memory than allowed.
    MemoryLimit,
    /// Bytes that are not an image.
    NotAnImage,
    /// An image that is not PNG or JPEG (or a variant the decoder cannot read).
    UnsupportedImage,
    /// A truncated or corrupt PNG / JPEG.
    CorruptImage,
    /// The model's image size is out of range (a configuration error).
    InvalidSize,
    /// A colour segmentation frame with too many pixels far from every class colour (a photo?).
    NotASegmentationMap,
    /// A single-channel segmentation pixel that is not a class id.
    ClassIdOutOfRange,
    /// The request queue is full.
    QueueFull,
    /// The device is shutting down.
    ShuttingDown,
    /// Maps that do not fit the model.
    InvalidMaps,
    /// Generation parameters out of range.
    InvalidParams,
    /// A net of the model failed.
    ModelError,
    /// Inference failed.
    InferenceFailed,
    /// The image could not be encoded as PNG.
    EncodeFailed,
    /// An incoming message above `mqtt.max_packet_bytes` was dropped.
    MessageTooLarge,
}

impl ErrorCode {
    /// Every code, in the order of the README's list.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidId,
        ErrorCode::NoFrames,
        ErrorCode::UnknownModality,
        ErrorCode::InvalidBase64,
        ErrorCode::InvalidSteps,
        ErrorCode::InvalidStrength,
        ErrorCode::InvalidPrompt,
        ErrorCode::InvalidGuidanceScale,
        ErrorCode::EmptyFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyPixels,
        ErrorCode::MemoryLimit,
        ErrorCode::NotAnImage,
        ErrorCode::UnsupportedImage,
        ErrorCode::CorruptImage,
        ErrorCode::InvalidSize,
        ErrorCode::NotASegmentationMap,
        ErrorCode::ClassIdOutOfRange,
        ErrorCode::QueueFull,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidMaps,
        ErrorCode::InvalidParams,
        ErrorCode::ModelError,
        ErrorCode::InferenceFailed,
        ErrorCode::EncodeFailed,
        ErrorCode::MessageTooLarge,
    ];

    /// The code as it goes out on `P/error`, e.g. `"queue_full"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::NoFrames => "no_frames",
            ErrorCode::UnknownModality => "unknown_modality",
            ErrorCode::InvalidBase64 => "invalid_base64",
            ErrorCode::InvalidSteps => "invalid_steps",
            ErrorCode::InvalidStrength => "invalid_strength",
            ErrorCode::InvalidPrompt => "invalid_prompt",
            ErrorCode::InvalidGuidanceScale => "invalid_guidance_scale",
            ErrorCode::EmptyFrame => "empty_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::TooManyPixels => "too_many_pixels",
            ErrorCode::MemoryLimit => "memory_limit",
            ErrorCode::NotAnImage => "not_an_image",
            ErrorCode::UnsupportedImage => "unsupported_image",
            ErrorCode::CorruptImage => "corrupt_image",
            ErrorCode::InvalidSize => "invalid_size",
            ErrorCode::NotASegmentationMap => "not_a_segmentation_map",
            ErrorCode::ClassIdOutOfRange => "class_id_out_of_range",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::InvalidMaps => "invalid_maps",
            ErrorCode::InvalidParams => "invalid_params",
            ErrorCode::ModelError => "model_error",
            ErrorCode::InferenceFailed => "inference_failed",
            ErrorCode::EncodeFailed => "encode_failed",
            ErrorCode::MessageTooLarge => "message_too_large",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_are_the_wire_codes_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()), "{code:?}");
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{code}");
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
    }
}
