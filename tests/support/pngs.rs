//! Test frames: PNG encoding and decoding, segmentation and sketch frames, base64.

use super::*;

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// 64x64 segmentation: left half grass (class 1), right half water (class 2).
pub fn seg_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| Rgb(if x < 32 { PALETTE[1] } else { PALETTE[2] })))
}

/// 256x256 segmentation of pseudo-random classes: a PNG far above rumqttc's 10 KiB default.
pub fn big_seg_png() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = RgbImage::from_fn(256, 256, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Rgb(PALETTE[(state % 4) as usize])
    });
    let bytes = png(&img);
    assert!(bytes.len() > 10 * 1024, "test frame is only {} bytes", bytes.len());
    bytes
}

/// 64x64 sketch: white with a black vertical bar at x in 28..36.
pub fn sketch_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| if (28..36).contains(&x) { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) }))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_png(bytes: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(bytes, ImageFormat::Png).expect("a PNG").to_rgb8()
}
