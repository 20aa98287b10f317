//! Test fixtures of the frame decoder's unit tests: a palette modality and a sketch modality,
//! encoders and the decoded maps.

use std::io::Cursor;

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use ndarray::Array2;

use super::{FrameError, FrameLimits, decode_frame};
use crate::contract::{ClassInfo, ModalityInfo, ModalityKind, ModalityMap};

/// The class palette of [`seg`].
pub(super) const PALETTE: [(&str, [u8; 3]); 6] = [
    ("sky", [135, 206, 235]),
    ("cloud", [255, 255, 255]),
    ("mountain", [120, 100, 80]),
    ("grass", [50, 160, 60]),
    ("water", [30, 80, 200]),
    ("sand", [230, 200, 120]),
];

/// A segmentation modality with the classes of [`PALETTE`].
pub(super) fn seg() -> ModalityInfo {
    ModalityInfo {
        name: "segmentation".into(),
        kind: ModalityKind::Segmentation,
        channels: PALETTE.len(),
        classes: PALETTE.iter().map(|(n, c)| ClassInfo { name: n.to_string(), color: *c }).collect(),
        value_range: None,
    }
}

/// A sketch modality.
pub(super) fn sketch() -> ModalityInfo {
    ModalityInfo { name: "sketch".into(), kind: ModalityKind::Sketch, channels: 1, classes: vec![], value_range: None }
}

/// The default limits.
pub(super) fn lim() -> FrameLimits {
    FrameLimits::default()
}

/// `img` as PNG bytes.
pub(super) fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Decode `bytes` as a segmentation at `size`.
pub(super) fn seg_map(bytes: &[u8], size: usize) -> Result<Array2<u8>, FrameError> {
    match decode_frame(bytes, &seg(), size, &lim())? {
        ModalityMap::Segmentation(ids) => Ok(ids),
        other => panic!("expected a segmentation, got {other:?}"),
    }
}

/// Decode `bytes` as a sketch at `size` (it must decode).
pub(super) fn sketch_map(bytes: &[u8], size: usize) -> Array2<f32> {
    match decode_frame(bytes, &sketch(), size, &lim()).unwrap() {
        ModalityMap::Sketch(s) => s,
        other => panic!("expected a sketch, got {other:?}"),
    }
}

/// An id pattern with every class, irregular enough to catch transposes and flips.
pub(super) fn ids_pattern(w: usize, h: usize) -> Array2<u8> {
    Array2::from_shape_fn((h, w), |(y, x)| ((x * 7 + y * 3 + x * y) % PALETTE.len()) as u8)
}

/// `ids` painted in the palette colours.
pub(super) fn colour_image(ids: &Array2<u8>) -> RgbImage {
    let (h, w) = ids.dim();
    RgbImage::from_fn(w as u32, h as u32, |x, y| Rgb(PALETTE[ids[[y as usize, x as usize]] as usize].1))
}

/// A 3-pixel-wide cross and a diagonal on `bg`, strokes of value `ink`.
pub(super) fn strokes(w: u32, h: u32, bg: u8, ink: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let on = (x as i64 - w as i64 / 2).abs() <= 1 || (y as i64 - h as i64 / 3).abs() <= 1 || x == y;
        Luma([if on { ink } else { bg }])
    })
}
