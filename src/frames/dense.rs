//! Dense frames (depth, normals, heatmaps): 1 to 4 channels of 8- or 16-bit values scaled to
//! [0, 1] by their bit depth, mapped onto the modality's value range, resized with a triangle
//! filter. The trainer reads dataset maps with the same rules (`train/mcm_train/data/preprocess.py`).

use image::DynamicImage;
use ndarray::Array3;

use super::decode::Decoded;
use super::pixels::{clamp_unit, luma_alpha, resize_plane};
use crate::contract::{ModalityInfo, ModalityMap};

/// The dense map of a decoded frame at `[channels, size, size]` (see [`super::decode_frame`]).
pub(super) fn decode(decoded: &Decoded, modality: &ModalityInfo, size: usize) -> ModalityMap {
    let img = &decoded.image;
    let (w, h) = (img.width(), img.height());
    let [lo, hi] = modality.value_range();
    let c = modality.channels.clamp(1, 4); // model.toml checks 1..=4
    let mut map = Array3::<f32>::zeros((c, size, size));
    for (k, plane) in planes(img, c).into_iter().enumerate() {
        let resized = resize_plane(plane, w, h, size);
        for (dst, v) in map.index_axis_mut(ndarray::Axis(0), k).iter_mut().zip(resized) {
            *dst = lo + (hi - lo) * clamp_unit(v);
        }
    }
    ModalityMap::Dense(map)
}

/// The `c` channel planes in [0, 1], row-major: 1 luma; 2 luma + alpha; 3 RGB; 4 RGBA (grey
/// images give their value in every colour channel; images without alpha give alpha 1).
fn planes(img: &DynamicImage, c: usize) -> Vec<Vec<f32>> {
    match c {
        1 => vec![luma_alpha(img).map(|(l, _)| l).collect()],
        2 => {
            let (l, a): (Vec<f32>, Vec<f32>) = luma_alpha(img).unzip();
            vec![l, a]
        }
        _ => {
            let rgba = img.to_rgba32f();
            (0..c).map(|k| rgba.pixels().map(|p| p.0[k]).collect()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, Luma, LumaA, Rgb, RgbImage};

    use super::super::fixtures::png;
    use super::super::{FrameLimits, decode_frame};
    use super::*;
    use crate::contract::ModalityKind;

    fn dense(channels: usize, value_range: Option<[f32; 2]>) -> ModalityInfo {
        ModalityInfo { name: "depth".into(), kind: ModalityKind::Dense, channels, classes: vec![], value_range }
    }

    fn map(bytes: &[u8], m: &ModalityInfo, size: usize) -> Array3<f32> {
        match decode_frame(bytes, m, size, &FrameLimits::default()).unwrap() {
            ModalityMap::Dense(v) => v,
            other => panic!("expected a dense map, got {other:?}"),
        }
    }

    #[test]
    fn sixteen_bit_grey_keeps_its_precision_and_eight_bit_scales_by_255() {
        let g16 = ImageBuffer::<Luma<u16>, _>::from_fn(8, 8, |x, y| Luma([(x * 8000 + y * 7) as u16]));
        let out = map(&png(&DynamicImage::ImageLuma16(g16)), &dense(1, None), 8);
        assert_eq!(out.dim(), (1, 8, 8));
        assert!((out[[0, 3, 5]] - (5.0 * 8000.0 + 3.0 * 7.0) / 65535.0).abs() < 1e-7);
        assert!((out[[0, 0, 1]] - out[[0, 1, 1]]).abs() > 0.0, "16-bit steps of 7 must survive");
        let g8 = ImageBuffer::<Luma<u8>, _>::from_fn(4, 4, |x, _| Luma([(x * 85) as u8]));
        let out = map(&png(&DynamicImage::ImageLuma8(g8)), &dense(1, Some([-1.0, 1.0])), 4);
        for x in 0..4 {
            let want = -1.0 + 2.0 * (x as f32 * 85.0) / 255.0;
            assert!((out[[0, 1, x]] - want).abs() < 1e-6, "x={x}: {} vs {want}", out[[0, 1, x]]);
        }
    }

    #[test]
    fn channels_come_from_luma_alpha_or_rgb() {
        let rgb = RgbImage::from_fn(4, 4, |x, y| Rgb([(x * 60) as u8, (y * 60) as u8, 200]));
        let bytes = png(&DynamicImage::ImageRgb8(rgb.clone()));
        let three = map(&bytes, &dense(3, None), 4);
        assert!((three[[0, 2, 3]] - 180.0 / 255.0).abs() < 1e-6 && (three[[1, 2, 3]] - 120.0 / 255.0).abs() < 1e-6);
        let one = map(&bytes, &dense(1, None), 4);
        let luma = (0.2126 * 180.0 + 0.7152 * 120.0 + 0.0722 * 200.0) / 255.0;
        assert!((one[[0, 2, 3]] - luma).abs() < 1e-5);
        let la = ImageBuffer::<LumaA<u8>, _>::from_fn(4, 4, |x, _| LumaA([100, (x * 80) as u8]));
        let two = map(&png(&DynamicImage::ImageLumaA8(la)), &dense(2, None), 4);
        assert!((two[[0, 0, 0]] - 100.0 / 255.0).abs() < 1e-6 && (two[[1, 0, 3]] - 240.0 / 255.0).abs() < 1e-6);
        let four = map(&bytes, &dense(4, None), 4);
        assert!(four.index_axis(ndarray::Axis(0), 3).iter().all(|&a| a == 1.0), "no alpha: opaque");
    }

    #[test]
    fn resizing_is_smooth_and_stays_in_range() {
        let ramp = ImageBuffer::<Luma<u16>, _>::from_fn(64, 48, |x, _| Luma([(x * 1000) as u16]));
        let out = map(&png(&DynamicImage::ImageLuma16(ramp)), &dense(1, Some([2.0, 3.0])), 16);
        assert_eq!(out.dim(), (1, 16, 16));
        assert!(out.iter().all(|v| (2.0..=3.0).contains(v)));
        let row = out.index_axis(ndarray::Axis(0), 0).row(8).to_vec();
        assert!(row.windows(2).all(|w| w[1] > w[0]), "a ramp stays a ramp: {row:?}");
    }
}
