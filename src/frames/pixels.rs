//! Pixel helpers shared by the modality decoders: luminance and alpha of any colour type, and
//! the smooth (triangle filter) resize of a float plane.

use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, Luma};

/// (luminance, alpha) of every pixel, both in [0, 1], row-major.
pub(super) fn luma_alpha(img: &DynamicImage) -> Box<dyn Iterator<Item = (f32, f32)> + '_> {
    const K8: f32 = 1.0 / 255.0;
    const K16: f32 = 1.0 / 65535.0;
    match img {
        DynamicImage::ImageLuma8(b) => pixels(b.as_raw(), 1, K8),
        DynamicImage::ImageLumaA8(b) => pixels(b.as_raw(), 2, K8),
        DynamicImage::ImageRgb8(b) => pixels(b.as_raw(), 3, K8),
        DynamicImage::ImageRgba8(b) => pixels(b.as_raw(), 4, K8),
        DynamicImage::ImageLuma16(b) => pixels(b.as_raw(), 1, K16),
        DynamicImage::ImageLumaA16(b) => pixels(b.as_raw(), 2, K16),
        DynamicImage::ImageRgb16(b) => pixels(b.as_raw(), 3, K16),
        DynamicImage::ImageRgba16(b) => pixels(b.as_raw(), 4, K16),
        DynamicImage::ImageRgb32F(b) => pixels(b.as_raw(), 3, 1.0),
        DynamicImage::ImageRgba32F(b) => pixels(b.as_raw(), 4, 1.0),
        other => {
            let raw = other.to_rgba32f().into_raw();
            Box::new((0..raw.len() / 4).map(move |i| {
                let p = &raw[4 * i..4 * i + 4];
                (rgb_luma(p[0], p[1], p[2]), p[3])
            }))
        }
    }
}

/// (luminance, alpha) of `stride`-channel pixels (grey, grey + alpha, RGB, RGBA) scaled by `k`.
fn pixels<T: Copy + Into<f32>>(raw: &[T], stride: usize, k: f32) -> Box<dyn Iterator<Item = (f32, f32)> + '_> {
    Box::new(raw.chunks_exact(stride).map(move |p| {
        let c = |i: usize| p[i].into() * k;
        match stride {
            1 => (c(0), 1.0),
            2 => (c(0), c(1)),
            3 => (rgb_luma(c(0), c(1), c(2)), 1.0),
            _ => (rgb_luma(c(0), c(1), c(2)), c(3)),
        }
    }))
}

/// Rec. 709 luma (the coefficients `image` uses).
fn rgb_luma(r: f32, g: f32, b: f32) -> f32 {
    0.2126 * r + 0.7152 * g + 0.0722 * b
}

/// `v` clamped to [0, 1]; NaN becomes 0.
pub(super) fn clamp_unit(v: f32) -> f32 {
    if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) }
}

/// Resize a row-major `[h, w]` plane to `[size, size]` with a triangle (bilinear, area-aware when
/// shrinking) filter; returns it unchanged at its own size. A buffer that does not match `w x h`
/// gives zeros.
pub(super) fn resize_plane(values: Vec<f32>, w: u32, h: u32, size: usize) -> Vec<f32> {
    let side = size as u32; // size <= MAX_OUTPUT_SIZE
    if (w as usize, h as usize) == (size, size) {
        return values;
    }
    let Some(buf) = ImageBuffer::<Luma<f32>, Vec<f32>>::from_raw(w, h, values) else { return vec![0.0; size * size] };
    // image's resize samples vertically first, through an RGBA f32 buffer of source width x new
    // height (16 bytes a pixel): for a wide frame (e.g. 40,000 x 1) that is far larger than the
    // frame itself. Resizing the transpose keeps it at min(w, h) x size.
    if w > h {
        let resized = image::imageops::resize(&image::imageops::rotate90(&buf), side, side, FilterType::Triangle);
        image::imageops::rotate270(&resized).into_raw()
    } else {
        image::imageops::resize(&buf, side, side, FilterType::Triangle).into_raw()
    }
}
