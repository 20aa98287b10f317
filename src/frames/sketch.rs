//! Sketch frames: stroke strength in [0, 1] from dark-on-light or light-on-dark strokes
//! (detected) or from alpha over a transparent background, resized with a triangle filter.

use image::DynamicImage;
use ndarray::Array2;

use super::decode::Decoded;
use super::pixels::{clamp_unit, luma_alpha, resize_plane};
use crate::contract::ModalityMap;

/// Pixels with alpha below this (alpha in [0, 1]) are transparent.
const TRANSPARENT_BELOW: f32 = 0.5;

/// Bins of the luminance histogram used for the sketch background median (one per 16-bit level).
const LUMA_BINS: usize = 1 << 16;

/// The stroke map of a decoded sketch frame at `[size, size]` (see [`super::decode_frame`]).
pub(super) fn decode(decoded: &Decoded, size: usize) -> ModalityMap {
    let (w, h) = (decoded.image.width(), decoded.image.height());
    let strokes = stroke_strength(&decoded.image);
    ModalityMap::Sketch(resize_smooth(strokes, w, h, size))
}

fn luma_bin(l: f32) -> usize {
    // NaN casts to 0.
    ((l.clamp(0.0, 1.0) * (LUMA_BINS - 1) as f32).round() as usize).min(LUMA_BINS - 1)
}

/// Stroke strength in [0, 1] of every pixel (row-major), see [`super::decode_frame`].
fn stroke_strength(img: &DynamicImage) -> Vec<f32> {
    // Histogram of opaque luminances, with the smallest value seen in each bin: for 8- and 16-bit
    // grey all values of a bin are equal, so the median below is exact (a blank frame gives 0).
    let mut hist = vec![0u64; LUMA_BINS];
    let mut lowest = vec![f32::INFINITY; LUMA_BINS];
    let (mut total, mut transparent) = (0u64, 0u64);
    for (l, a) in luma_alpha(img) {
        total += 1;
        if a < TRANSPARENT_BELOW {
            transparent += 1;
        } else {
            let b = luma_bin(l);
            hist[b] += 1;
            lowest[b] = lowest[b].min(l.clamp(0.0, 1.0));
        }
    }
    let opaque = total - transparent;
    let clamp = clamp_unit;
    if transparent * 2 > total || opaque == 0 {
        // Strokes over a transparent background: coverage is the stroke, whatever the RGB.
        return luma_alpha(img).map(|(_, a)| clamp(a)).collect();
    }
    // Lower median of the opaque luminances: the background level.
    let rank = (opaque - 1) / 2;
    let mut seen = 0u64;
    let mut bin = 0;
    for (i, &count) in hist.iter().enumerate() {
        seen += count;
        if seen > rank {
            bin = i;
            break;
        }
    }
    let bg = if lowest[bin].is_finite() { lowest[bin] } else { bin as f32 / (LUMA_BINS - 1) as f32 };
    if bg >= 0.5 {
        // Dark strokes on a light background.
        luma_alpha(img).map(|(l, a)| clamp(clamp(a) * (bg - l) / bg)).collect()
    } else {
        // Light strokes on a dark background.
        luma_alpha(img).map(|(l, a)| clamp(clamp(a) * (l - bg) / (1.0 - bg))).collect()
    }
}

/// Resize a `[h, w]` stroke map to `[size, size]` with a triangle filter, clamped to [0, 1].
fn resize_smooth(strokes: Vec<f32>, w: u32, h: u32, size: usize) -> Array2<f32> {
    let mut map = Array2::from_shape_vec((size, size), resize_plane(strokes, w, h, size))
        .unwrap_or_else(|_| Array2::zeros((size, size)));
    map.mapv_inplace(clamp_unit);
    map
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, ImageBuffer, Luma, Rgba, RgbaImage};

    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn light_on_dark_and_dark_on_light_give_the_same_map() {
        for size in [48, 16, 100] {
            let dark_on_light = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(48, 40, 255, 0))), size);
            let light_on_dark = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(48, 40, 0, 255))), size);
            assert_eq!(dark_on_light.dim(), (size, size));
            let diff = (&dark_on_light - &light_on_dark).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            assert!(diff < 1e-5, "size {size}: max difference {diff}");
            assert!(dark_on_light.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // Native size: exactly 1 on strokes, 0 elsewhere.
        let img = strokes(48, 48, 255, 0);
        let map = sketch_map(&png(&DynamicImage::ImageLuma8(img.clone())), 48);
        for (x, y, p) in img.enumerate_pixels() {
            assert_eq!(map[[y as usize, x as usize]], if p[0] == 0 { 1.0 } else { 0.0 });
        }
        // Grey paper and grey pencil, inverted: still the same map, background at 0.
        let a = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(32, 32, 220, 60))), 32);
        let b = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(32, 32, 35, 195))), 32);
        assert!(a.iter().zip(b.iter()).all(|(p, q)| (p - q).abs() < 1e-3));
        assert_eq!(a[[0, 5]], 0.0);
        assert!((a[[0, 16]] - (220.0 - 60.0) / 220.0).abs() < 1e-3);
    }

    #[test]
    fn transparent_background_counts_as_background() {
        let reference = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(40, 40, 255, 0))), 20);
        // Black RGB everywhere, strokes only in alpha.
        let rgba = RgbaImage::from_fn(40, 40, |x, y| {
            let a = if strokes(40, 40, 255, 0).get_pixel(x, y)[0] == 0 { 255 } else { 0 };
            Rgba([0, 0, 0, a])
        });
        let map = sketch_map(&png(&DynamicImage::ImageRgba8(rgba.clone())), 20);
        assert!(map.iter().zip(reference.iter()).all(|(p, q)| (p - q).abs() < 1e-5));
        // White strokes on a transparent (white RGB) background: the same.
        let white = RgbaImage::from_fn(40, 40, |x, y| Rgba([255, 255, 255, rgba.get_pixel(x, y)[3]]));
        let map = sketch_map(&png(&DynamicImage::ImageRgba8(white)), 20);
        assert!(map.iter().zip(reference.iter()).all(|(p, q)| (p - q).abs() < 1e-5));
        // Opaque white page with black strokes and a transparent black corner: corner is background.
        let page = RgbaImage::from_fn(40, 40, |x, y| {
            if x < 10 && y < 10 {
                Rgba([0, 0, 0, 0])
            } else {
                let v = strokes(40, 40, 255, 0).get_pixel(x, y)[0];
                Rgba([v, v, v, 255])
            }
        });
        let map = sketch_map(&png(&DynamicImage::ImageRgba8(page)), 40);
        assert!(map.slice(ndarray::s![..10, ..10]).iter().all(|&v| v == 0.0));
        assert_eq!(map[[20, 20]], 1.0);
    }

    #[test]
    fn blank_sketches_are_all_zero() {
        for v in [0u8, 128, 255] {
            let map = sketch_map(&png(&DynamicImage::ImageLuma8(GrayImage::from_pixel(30, 20, Luma([v])))), 16);
            assert!(map.iter().all(|&x| x == 0.0), "value {v}");
        }
        let clear = RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 0]));
        assert!(sketch_map(&png(&DynamicImage::ImageRgba8(clear)), 16).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn sketch_resize_is_smooth_and_keeps_strokes() {
        let map = sketch_map(&png(&DynamicImage::ImageLuma8(strokes(128, 128, 255, 0))), 32);
        assert_eq!(map.dim(), (32, 32));
        assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
        // The vertical stroke (3 px of 4 per output pixel) stays strong, background stays 0.
        assert!(map[[20, 16]] > 0.3 || map[[20, 15]] > 0.3, "{:?}", map.row(20));
        assert_eq!(map[[31, 2]], 0.0);
        // Smoothing produces intermediate values somewhere.
        assert!(map.iter().any(|&v| v > 0.05 && v < 0.95));
        // A 16-bit and an RGB version of the same sketch agree.
        let grey = strokes(64, 64, 255, 0);
        let g16 = ImageBuffer::<Luma<u16>, _>::from_fn(64, 64, |x, y| Luma([u16::from(grey.get_pixel(x, y)[0]) * 257]));
        let a = sketch_map(&png(&DynamicImage::ImageLuma8(grey.clone())), 32);
        let b = sketch_map(&png(&DynamicImage::ImageLuma16(g16)), 32);
        let c = sketch_map(&png(&DynamicImage::ImageLuma8(grey).to_rgb8().into()), 32);
        assert!(a.iter().zip(b.iter()).zip(c.iter()).all(|((p, q), r)| (p - q).abs() < 1e-4 && (p - r).abs() < 1e-4));
    }
}
