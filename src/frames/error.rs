//! [`FrameError`]: why a frame could not be decoded, with its code for the `error` topic.

use super::MAX_OUTPUT_SIZE;
use super::palette::PALETTE_TOLERANCE;
use crate::error_code::ErrorCode;

/// Why a frame could not be decoded. Messages are meant for the `error` topic; [`FrameError::code`]
/// gives the short snake_case code that goes with them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The frame has no bytes.
    #[error("empty frame (0 bytes)")]
    Empty,
    /// The encoded frame is larger than [`super::FrameLimits::max_bytes`].
    #[error("frame is {bytes} bytes, more than the limit of {max_bytes} bytes")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The header declares more than [`super::FrameLimits::max_pixels`] pixels.
    #[error("image is {width}x{height} pixels, more than the limit of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, max_pixels: u64 },
    /// The decoder refused the image dimensions (one side alone exceeds the pixel limit).
    #[error("image dimensions exceed the limit of {max_pixels} pixels: {message}")]
    DimensionLimit { message: String, max_pixels: u64 },
    /// The decoder needed more memory than allowed.
    #[error("decoding would need more memory than allowed ({max_alloc} bytes): {message}")]
    MemoryLimit { message: String, max_alloc: u64 },
    /// The bytes are not a recognised image format.
    #[error("not an image: expected PNG or JPEG bytes")]
    NotAnImage,
    /// An image format other than PNG / JPEG, or a variant of them the decoder cannot read.
    #[error("unsupported image: {message} (PNG and JPEG are supported)")]
    Unsupported { message: String },
    /// A PNG / JPEG that is truncated, corrupt or has zero width or height.
    #[error("corrupt image: {message}")]
    Corrupt { message: String },
    /// The model's image size is 0 or absurdly large (a configuration error, not a frame error).
    #[error("invalid output size {size} (must be 1..={MAX_OUTPUT_SIZE})")]
    InvalidSize { size: usize },
    /// A colour segmentation frame with more than [`super::FrameLimits::max_far_share`] of its
    /// pixels further than [`PALETTE_TOLERANCE`] from every class colour (e.g. a photo), or a
    /// modality without classes.
    #[error(
        "not a segmentation map: {:.1} % of the pixels are further than {PALETTE_TOLERANCE} RGB units from \
         every one of the model's {classes} class colours (at most {:.1} % may be, for anti-aliased \
         edges and JPEG noise); paint with the class colours of the status",
        100.0 * far_share, 100.0 * max_far_share
    )]
    NotASegmentationMap { far_share: f32, max_far_share: f32, classes: usize },
    /// A single-channel segmentation pixel whose value is not a class id of the model.
    #[error("pixel (x={x}, y={y}) has class id {id}, but the model has {classes} classes (ids 0..={max})", max = .classes.saturating_sub(1))]
    ClassIdOutOfRange { id: u32, x: u32, y: u32, classes: usize },
}

impl FrameError {
    /// The code for the `error` topic's `code` field.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Empty => ErrorCode::EmptyFrame,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::TooManyPixels { .. } | FrameError::DimensionLimit { .. } => ErrorCode::TooManyPixels,
            FrameError::MemoryLimit { .. } => ErrorCode::MemoryLimit,
            FrameError::NotAnImage => ErrorCode::NotAnImage,
            FrameError::Unsupported { .. } => ErrorCode::UnsupportedImage,
            FrameError::Corrupt { .. } => ErrorCode::CorruptImage,
            FrameError::InvalidSize { .. } => ErrorCode::InvalidSize,
            FrameError::NotASegmentationMap { .. } => ErrorCode::NotASegmentationMap,
            FrameError::ClassIdOutOfRange { .. } => ErrorCode::ClassIdOutOfRange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_snake_case_and_distinct_where_it_matters() {
        let errors = [
            FrameError::Empty,
            FrameError::TooLarge { bytes: 2, max_bytes: 1 },
            FrameError::TooManyPixels { width: 9, height: 9, max_pixels: 1 },
            FrameError::DimensionLimit { message: "m".into(), max_pixels: 1 },
            FrameError::MemoryLimit { message: "m".into(), max_alloc: 1 },
            FrameError::NotAnImage,
            FrameError::Unsupported { message: "Gif".into() },
            FrameError::Corrupt { message: "m".into() },
            FrameError::InvalidSize { size: 0 },
            FrameError::NotASegmentationMap { far_share: 0.625, max_far_share: 0.2, classes: 6 },
            FrameError::ClassIdOutOfRange { id: 9, x: 0, y: 0, classes: 6 },
        ];
        for e in &errors {
            let code = e.code().as_str();
            assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert!(!e.to_string().is_empty());
        }
        assert!(errors[9].to_string().contains("62.5 %") && errors[9].to_string().contains("20.0 %"), "{}", errors[9]);
    }
}
