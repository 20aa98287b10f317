//! Frame decoding: untrusted PNG / JPEG bytes -> a [`ModalityMap`] at the model's size.
//!
//! Frames arrive over MQTT from cameras and tablets, so everything here treats its input as
//! hostile: the byte count and the pixel count (read from the header, before any pixel is decoded)
//! are bounded by [`FrameLimits`], the `image` decoder gets width, height and allocation limits
//! before it decodes, and every failure is a [`FrameError`], never a panic.
//!
//! Pitfalls handled (DESIGN.md, "Known library pitfalls", image 0.25):
//! - the default `image::Limits` cap allocations only: width and height caps are set explicitly;
//! - `decode()` ignores EXIF orientation: it is read from the decoder and applied;
//! - palette PNGs decode to colours: colours are mapped back to class ids through the model's palette;
//! - 16-bit grey label maps keep their raw values (no 8-bit conversion);
//! - RGBA sketches with a transparent background hide black RGB: alpha decides the background;
//! - label maps are resized with nearest neighbour only (bilinear would invent classes).
//!
//! Parts: `decode` (bytes -> oriented image, within the limits), one module per modality kind
//! (`segmentation`, `sketch`, `dense`: image -> map at the model's size, sharing `pixels`),
//! `limits` and `error`. The trainer reads dataset maps with the same rules
//! (`train/mcm_train/data/preprocess.py`); `tests/parity.rs` replays the fixture frames it writes.

mod decode;
mod dense;
mod error;
#[cfg(test)]
mod fixtures;
mod limits;
mod palette;
mod pixels;
mod segmentation;
mod sketch;
#[cfg(test)]
mod test_png;

pub use error::FrameError;
pub use limits::FrameLimits;
pub use palette::PALETTE_TOLERANCE;

use crate::contract::{ModalityInfo, ModalityKind, ModalityMap};

/// Largest output side accepted for `size` (a sanity bound on the model's image size).
pub const MAX_OUTPUT_SIZE: usize = 1 << 16;

/// Decode one frame of `modality` into a map of exactly `[size, size]`.
///
/// `bytes` is a PNG or JPEG of any size (within `limits`), in any colour type and bit depth; its
/// EXIF orientation is applied first.
///
/// - Segmentation: returns [`ModalityMap::Segmentation`] with class ids `< modality.channels`.
///   Single-channel images (grey, grey + alpha; 1 to 16 bits) hold the class id directly (16-bit
///   values are used raw, low bit depths are not scaled); colour images (RGB, RGBA, palette PNGs)
///   map each pixel to the nearest `modality.classes[i].color` within [`PALETTE_TOLERANCE`]. Alpha
///   is ignored. The id map is resized with nearest neighbour, so only ids present in the frame
///   appear in the output. Label maps should be lossless (PNG): JPEG artefacts at class boundaries
///   may exceed the tolerance.
/// - Sketch: returns [`ModalityMap::Sketch`] with stroke strength in `[0, 1]` (1 on a stroke, 0 on
///   the background). Transparent pixels are background. When most pixels are transparent the
///   strokes are the opaque pixels (strength = alpha, whatever their colour); otherwise the
///   background level `B` is the median luminance of the opaque pixels: dark strokes on a light
///   background (`B >= 0.5`) give `(B - L) / B`, light strokes on a dark background give
///   `(L - B) / (1 - B)`, each times alpha and clamped to `[0, 1]`. A blank frame gives all zeros.
///   The map is resized with a triangle (bilinear, area-aware when shrinking) filter.
/// - Dense: returns [`ModalityMap::Dense`] `[channels, size, size]`: 1 channel is the luminance
///   (grey value, or Rec. 709 luma of a colour frame), 2 luminance and alpha, 3 RGB, 4 RGBA; 8-
///   and 16-bit values are scaled to [0, 1] by their bit depth (255, 65535), mapped linearly onto
///   the modality's `value_range`, and resized with the triangle filter.
///
/// # Errors
/// [`FrameError`]: empty or oversized input, more than `limits.max_pixels` pixels (checked on the
/// header, before decoding), not an image, a format other than PNG / JPEG, corrupt or truncated
/// data, `size` outside `1..=MAX_OUTPUT_SIZE`, and for segmentations a class id out of range
/// (naming the pixel) or a colour frame that is not a label map (more than
/// `limits.max_far_share` of its pixels further than [`PALETTE_TOLERANCE`] from every class). Never panics on any byte string.
pub fn decode_frame(
    bytes: &[u8],
    modality: &ModalityInfo,
    size: usize,
    limits: &FrameLimits,
) -> Result<ModalityMap, FrameError> {
    if size == 0 || size > MAX_OUTPUT_SIZE {
        return Err(FrameError::InvalidSize { size });
    }
    let decoded = decode::decode_image(bytes, limits)?;
    match modality.kind {
        ModalityKind::Segmentation => segmentation::decode(&decoded, modality, size, limits.max_far_share),
        ModalityKind::Sketch => Ok(sketch::decode(&decoded, size)),
        ModalityKind::Dense => Ok(dense::decode(&decoded, modality, size)),
    }
}
