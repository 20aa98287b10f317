//! [`FrameLimits`]: the resources one frame may take, checked before and during decoding.

use serde::{Deserialize, Serialize};

/// Largest decoded bytes per pixel of a PNG or JPEG (RGBA, 16 bits per channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Allocation headroom given to the decoder beyond the output buffer (row buffers, zlib, ICC, EXIF).
const DECODER_HEADROOM: u64 = 4 << 20;

/// Resource limits for decoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameLimits {
    /// Largest encoded frame in bytes (default 8 MiB).
    pub max_bytes: usize,
    /// Largest width x height in pixels, checked on the header before decoding (default 16 Mpx,
    /// 4096 x 4096). Decoding allocates at most about 8 bytes per pixel for the image plus a few
    /// bytes per pixel for the intermediate maps.
    pub max_pixels: u64,
    /// Largest share (0..=1) of a colour segmentation frame's pixels that may be further than
    /// [`super::PALETTE_TOLERANCE`] from every class colour (anti-aliased edges, JPEG noise);
    /// more is refused as not a label map (default 0.2).
    pub max_far_share: f32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FrameLimits {
    /// 8 MiB per frame, 16 Mpx (4096 x 4096), 20 % far pixels.
    pub const DEFAULT: Self = Self { max_bytes: 8 << 20, max_pixels: 4096 * 4096, max_far_share: 0.2 };

    /// Limits of `max_bytes` encoded bytes and `max_pixels` decoded pixels (default far share).
    pub fn new(max_bytes: usize, max_pixels: u64) -> Self {
        Self { max_bytes, max_pixels, ..Self::DEFAULT }
    }

    /// Bytes the decoder may allocate: the largest decoded image (8 bytes per pixel) plus headroom.
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL).saturating_add(DECODER_HEADROOM)
    }

    /// The `image` crate limits derived from these: width and height each at most `max_pixels`
    /// (image 0.25 caps neither by default) and allocations at most [`Self::max_alloc`].
    pub fn image_limits(&self) -> image::Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        limits.max_alloc = Some(self.max_alloc());
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_image_limits() {
        let limits = FrameLimits::default();
        assert_eq!((limits.max_bytes, limits.max_pixels), (8 * 1024 * 1024, 16 * 1024 * 1024));
        let il = limits.image_limits();
        assert_eq!((il.max_image_width, il.max_image_height), (Some(16 << 20), Some(16 << 20)));
        assert!(il.max_alloc.unwrap() >= 8 * limits.max_pixels);
    }
}
