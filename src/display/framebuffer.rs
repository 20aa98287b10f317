//! Linux framebuffer pixels (`/dev/fbN`): the pixel formats ([`PixelFormat`]) and a picture as
//! framebuffer bytes ([`encode`]).

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Memory layout of one framebuffer pixel, as Linux fbdev stores it (little-endian words).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// 16 bits: red 5, green 6, blue 5 bits from the top, in a little-endian `u16` (`rgb565`).
    #[default]
    Rgb565,
    /// 16 bits: blue 5, green 6, red 5 bits from the top, in a little-endian `u16` (`bgr565`).
    Bgr565,
    /// 32 bits `0x00RRGGBB` little-endian: bytes B, G, R, 0 in memory (`xrgb8888`).
    Xrgb8888,
    /// 32 bits `0x00BBGGRR` little-endian: bytes R, G, B, 0 in memory (`xbgr8888`).
    Xbgr8888,
    /// 24 bits `0xRRGGBB` little-endian: bytes B, G, R in memory (fbdev 24 bpp with red at
    /// offset 16, DRM `RGB888`) (`rgb888`).
    Rgb888,
}

impl PixelFormat {
    /// Bytes of one pixel: 2, 3 or 4.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb565 | PixelFormat::Bgr565 => 2,
            PixelFormat::Rgb888 => 3,
            PixelFormat::Xrgb8888 | PixelFormat::Xbgr8888 => 4,
        }
    }

    fn put(self, [r, g, b]: [u8; 3], out: &mut Vec<u8>) {
        let pack565 = |hi: u8, mid: u8, lo: u8| ((hi as u16 >> 3) << 11 | (mid as u16 >> 2) << 5 | lo as u16 >> 3).to_le_bytes();
        match self {
            PixelFormat::Rgb565 => out.extend(pack565(r, g, b)),
            PixelFormat::Bgr565 => out.extend(pack565(b, g, r)),
            PixelFormat::Xrgb8888 => out.extend([b, g, r, 0]),
            PixelFormat::Xbgr8888 => out.extend([r, g, b, 0]),
            PixelFormat::Rgb888 => out.extend([b, g, r]),
        }
    }
}

/// `img` as framebuffer bytes: rows top to bottom, each `stride_bytes` long (zero-padded after
/// its `width * bytes_per_pixel` pixel bytes; `None` or a smaller value means no padding), so the
/// result has `stride * height` bytes.
pub fn encode(img: &RgbImage, format: PixelFormat, stride_bytes: Option<usize>) -> Vec<u8> {
    let row = img.width() as usize * format.bytes_per_pixel();
    let stride = stride_bytes.unwrap_or(row).max(row);
    let mut out = Vec::with_capacity(stride * img.height() as usize);
    for (y, pixels) in (1..).zip(img.rows()) {
        pixels.for_each(|p| format.put(p.0, &mut out));
        out.resize(y * stride, 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    const RED: Rgb<u8> = Rgb([255, 0, 0]);

    fn red_blue() -> RgbImage {
        RgbImage::from_fn(2, 1, |x, _| if x == 0 { RED } else { Rgb([0, 0, 255]) })
    }


    #[test]
    fn encode_packs_each_format_little_endian() {
        let img = red_blue();
        assert_eq!(encode(&img, PixelFormat::Rgb565, None), [0x00, 0xF8, 0x1F, 0x00]);
        assert_eq!(encode(&img, PixelFormat::Bgr565, None), [0x1F, 0x00, 0x00, 0xF8]);
        assert_eq!(encode(&img, PixelFormat::Xrgb8888, None), [0, 0, 255, 0, 255, 0, 0, 0]);
        assert_eq!(encode(&img, PixelFormat::Xbgr8888, None), [255, 0, 0, 0, 0, 0, 255, 0]);
        assert_eq!(encode(&img, PixelFormat::Rgb888, None), [0, 0, 255, 255, 0, 0]);
        let green = RgbImage::from_pixel(1, 1, Rgb([0, 255, 0]));
        assert_eq!(encode(&green, PixelFormat::Rgb565, None), 0x07E0u16.to_le_bytes());
    }

    #[test]
    fn encode_pads_rows_to_the_stride() {
        let img = RgbImage::from_fn(2, 2, |x, y| if (x + y) % 2 == 0 { RED } else { Rgb([0, 0, 255]) });
        let bytes = encode(&img, PixelFormat::Rgb565, Some(6));
        assert_eq!(bytes, [0x00, 0xF8, 0x1F, 0x00, 0, 0, 0x1F, 0x00, 0x00, 0xF8, 0, 0]);
        // A stride shorter than a row is ignored.
        assert_eq!(encode(&img, PixelFormat::Rgb565, Some(1)).len(), 8);
    }
}
