//! Segmentation frames: class ids from grey values or from the model's palette colours, resized
//! with nearest neighbour only (bilinear would invent classes).

use image::DynamicImage;
use ndarray::Array2;

use super::FrameError;
use super::decode::Decoded;
use crate::contract::{ClassInfo, ModalityInfo, ModalityMap};

/// Largest Euclidean RGB distance (0-255 per channel) at which a pixel still takes the class of
/// the nearest palette colour. Palette colours of a model should be further apart than twice this.
pub const PALETTE_TOLERANCE: f32 = 40.0;

/// The class ids of a decoded segmentation frame at `[size, size]` (see [`super::decode_frame`]).
pub(super) fn decode(decoded: &Decoded, modality: &ModalityInfo, size: usize) -> Result<ModalityMap, FrameError> {
    let ids = class_ids(decoded, modality)?;
    Ok(ModalityMap::Segmentation(resize_nearest(&ids, size)))
}

/// Class ids `[H, W]` of a segmentation frame at its own resolution.
fn class_ids(decoded: &Decoded, modality: &ModalityInfo) -> Result<Array2<u8>, FrameError> {
    let img = &decoded.image;
    let (w, h) = (img.width(), img.height());
    // Ids are u8 in `ModalityMap`: at most 256 classes can be addressed.
    let classes = modality.channels.min(256);
    let ids = match img {
        DynamicImage::ImageLuma8(b) => grey_ids(b.as_raw(), 1, w, classes, u32::from(decoded.grey_scale))?,
        DynamicImage::ImageLumaA8(b) => grey_ids(b.as_raw(), 2, w, classes, u32::from(decoded.grey_scale))?,
        DynamicImage::ImageLuma16(b) => grey_ids(b.as_raw(), 1, w, classes, 1)?,
        DynamicImage::ImageLumaA16(b) => grey_ids(b.as_raw(), 2, w, classes, 1)?,
        DynamicImage::ImageRgb8(b) => colour_ids(b.as_raw(), 3, w, modality, |v| v)?,
        DynamicImage::ImageRgba8(b) => colour_ids(b.as_raw(), 4, w, modality, |v| v)?,
        DynamicImage::ImageRgb16(b) => colour_ids(b.as_raw(), 3, w, modality, to_u8)?,
        DynamicImage::ImageRgba16(b) => colour_ids(b.as_raw(), 4, w, modality, to_u8)?,
        other => colour_ids(other.to_rgb8().as_raw(), 3, w, modality, |v| v)?,
    };
    Array2::from_shape_vec((h as usize, w as usize), ids)
        .map_err(|e| FrameError::Corrupt { message: format!("pixel buffer does not match {w}x{h}: {e}") })
}

/// 16-bit channel to 8 bits, rounded.
fn to_u8(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

/// Class ids from the first channel of `stride`-channel pixels, divided by `scale`.
fn grey_ids<T: Copy + Into<u32>>(
    raw: &[T],
    stride: usize,
    width: u32,
    classes: usize,
    scale: u32,
) -> Result<Vec<u8>, FrameError> {
    let scale = scale.max(1);
    let width = width.max(1) as usize;
    raw.chunks_exact(stride)
        .enumerate()
        .map(|(i, px)| {
            let id = px[0].into() / scale;
            if (id as usize) < classes {
                Ok(id as u8)
            } else {
                Err(FrameError::ClassIdOutOfRange { id, x: (i % width) as u32, y: (i / width) as u32, classes })
            }
        })
        .collect()
}

/// Class ids of colour pixels through the palette of `modality`.
fn colour_ids<T: Copy>(
    raw: &[T],
    stride: usize,
    width: u32,
    modality: &ModalityInfo,
    to8: impl Fn(T) -> u8,
) -> Result<Vec<u8>, FrameError> {
    let mut palette = Palette::new(&modality.classes[..modality.classes.len().min(modality.channels).min(256)]);
    let width = width.max(1) as usize;
    raw.chunks_exact(stride)
        .enumerate()
        .map(|(i, px)| {
            let rgb = [to8(px[0]), to8(px[1]), to8(px[2])];
            palette.lookup(rgb).map_err(|(nearest, distance)| FrameError::UnknownClassColour {
                color: rgb,
                x: (i % width) as u32,
                y: (i / width) as u32,
                nearest,
                distance,
            })
        })
        .collect()
}

/// Nearest-colour lookup with a small direct-mapped cache (label maps have few distinct colours).
struct Palette<'a> {
    classes: &'a [ClassInfo],
    cache: Vec<Option<([u8; 3], u8)>>,
}

const CACHE_BITS: u32 = 12;

impl<'a> Palette<'a> {
    fn new(classes: &'a [ClassInfo]) -> Self {
        Self { classes, cache: vec![None; 1 << CACHE_BITS] }
    }

    /// The id of the nearest class colour within [`PALETTE_TOLERANCE`] (first one on ties), or the
    /// description of the nearest class and its distance.
    fn lookup(&mut self, rgb: [u8; 3]) -> Result<u8, (String, f32)> {
        let key = u32::from_le_bytes([rgb[0], rgb[1], rgb[2], 0]);
        let slot = (key.wrapping_mul(0x9E37_79B1) >> (32 - CACHE_BITS)) as usize;
        if let Some((c, id)) = self.cache[slot]
            && c == rgb
        {
            return Ok(id);
        }
        let mut best: Option<(usize, i32)> = None;
        for (i, class) in self.classes.iter().enumerate() {
            let d2: i32 = (0..3).map(|k| (i32::from(rgb[k]) - i32::from(class.color[k])).pow(2)).sum();
            if best.is_none_or(|(_, b)| d2 < b) {
                best = Some((i, d2));
            }
        }
        let tol2 = (PALETTE_TOLERANCE * PALETTE_TOLERANCE) as i32;
        match best {
            Some((i, d2)) if d2 <= tol2 => {
                self.cache[slot] = Some((rgb, i as u8));
                Ok(i as u8)
            }
            Some((i, d2)) => {
                let c = &self.classes[i];
                let name = format!("{:?} #{:02x}{:02x}{:02x}", c.name, c.color[0], c.color[1], c.color[2]);
                Err((name, (d2 as f32).sqrt()))
            }
            None => Err(("none, the modality has no classes".into(), f32::INFINITY)),
        }
    }
}

/// Resize an id map to `[size, size]` with nearest neighbour (pixel-centre sampling).
fn resize_nearest(ids: &Array2<u8>, size: usize) -> Array2<u8> {
    let (h, w) = ids.dim();
    if (h, w) == (size, size) {
        return ids.clone();
    }
    let src = |i: usize, n: usize| -> usize {
        let s = ((2 * i as u128 + 1) * n as u128 / (2 * size as u128)) as usize;
        s.min(n.saturating_sub(1))
    };
    let xs: Vec<usize> = (0..size).map(|x| src(x, w)).collect();
    let ys: Vec<usize> = (0..size).map(|y| src(y, h)).collect();
    Array2::from_shape_fn((size, size), |(y, x)| ids[[ys[y], xs[x]]])
}

#[cfg(test)]
mod tests {
    use image::codecs::jpeg::JpegEncoder;
    use image::{GrayImage, ImageBuffer, ImageEncoder, Luma, Rgb, RgbaImage, Rgba};

    use super::super::fixtures::*;
    use super::super::test_png::{pack_bits, raw_png};
    use super::*;

    #[test]
    fn rgb_png_maps_palette_colours_exactly() {
        let ids = ids_pattern(19, 13);
        let bytes = png(&DynamicImage::ImageRgb8(colour_image(&ids)));
        // Square at its own size: no resizing at all.
        let square = ids_pattern(24, 24);
        assert_eq!(seg_map(&png(&DynamicImage::ImageRgb8(colour_image(&square))), 24).unwrap(), square);
        // RGBA (alpha ignored) gives the same ids.
        let rgba = DynamicImage::ImageRgb8(colour_image(&square)).to_rgba8();
        let rgba = RgbaImage::from_fn(24, 24, |x, y| {
            let p = rgba.get_pixel(x, y);
            Rgba([p[0], p[1], p[2], ((x * 10) % 256) as u8])
        });
        assert_eq!(seg_map(&png(&DynamicImage::ImageRgba8(rgba)), 24).unwrap(), square);
        // Non-square input still decodes (resized below).
        assert_eq!(seg_map(&bytes, 8).unwrap().dim(), (8, 8));
    }

    #[test]
    fn indexed_palette_png_decodes_to_class_ids() {
        // A real palette PNG whose PLTE order differs from the class order.
        let order = [3usize, 0, 5, 1, 4, 2];
        let plte: Vec<u8> = order.iter().flat_map(|&c| PALETTE[c].1).collect();
        let ids = ids_pattern(8, 8);
        let rows: Vec<Vec<u8>> = (0..8)
            .map(|y| (0..8).map(|x| order.iter().position(|&c| c == ids[[y, x]] as usize).unwrap() as u8).collect())
            .collect();
        let bytes = raw_png(8, 8, 8, 3, &[(b"PLTE", plte.clone())], &rows);
        assert_eq!(seg_map(&bytes, 8).unwrap(), ids);
        // 4-bit palette indices as well.
        let packed: Vec<Vec<u8>> = rows.iter().map(|r| pack_bits(r, 4)).collect();
        let bytes = raw_png(8, 8, 4, 3, &[(b"PLTE", plte)], &packed);
        assert_eq!(seg_map(&bytes, 8).unwrap(), ids);
    }

    #[test]
    fn colours_within_tolerance_map_and_beyond_are_rejected() {
        let mut img = colour_image(&Array2::from_elem((4, 4), 2u8)); // mountain [120, 100, 80]
        img.put_pixel(1, 1, Rgb([120 + 23, 100 + 23, 80 + 23])); // distance 39.8
        img.put_pixel(2, 2, Rgb([120 - 40, 100, 80])); // distance exactly 40
        let ids = seg_map(&png(&DynamicImage::ImageRgb8(img.clone())), 4).unwrap();
        assert!(ids.iter().all(|&id| id == 2), "{ids:?}");

        img.put_pixel(3, 1, Rgb([120 + 30, 100 + 30, 80])); // distance 42.4
        let err = seg_map(&png(&DynamicImage::ImageRgb8(img)), 4).unwrap_err();
        assert_eq!(err.code().as_str(), "unknown_class_colour");
        match &err {
            FrameError::UnknownClassColour { color, x, y, nearest, distance } => {
                assert_eq!((*color, *x, *y), ([150, 130, 80], 3, 1));
                assert!(nearest.contains("mountain"), "{nearest}");
                assert!((distance - 42.43).abs() < 0.01);
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("#968250") && msg.contains("x=3") && msg.contains("y=1"), "{msg}");
    }

    #[test]
    fn nearest_resize_keeps_only_existing_classes() {
        // Classes 0, 2 and 5 only, in a fine checkerboard with stripes: any interpolating filter
        // would produce colours (and so classes) in between.
        let present = [0u8, 2, 5];
        let ids = Array2::from_shape_fn((37, 23), |(y, x)| present[(x + y / 3) % 3]);
        let bytes = png(&DynamicImage::ImageRgb8(colour_image(&ids)));
        for size in [1, 5, 16, 23, 32, 64, 100] {
            let out = seg_map(&bytes, size).unwrap();
            assert_eq!(out.dim(), (size, size));
            assert!(out.iter().all(|id| present.contains(id)), "size {size}: {out:?}");
        }
        // Upscaling 2x2 by 3 repeats each pixel as a 3x3 block.
        let small = Array2::from_shape_vec((2, 2), vec![1u8, 4, 3, 0]).unwrap();
        let out = seg_map(&png(&DynamicImage::ImageRgb8(colour_image(&small))), 6).unwrap();
        let expected = Array2::from_shape_fn((6, 6), |(y, x)| small[[y / 3, x / 3]]);
        assert_eq!(out, expected);
        // Downscaling by 2 samples pixel centres (odd source coordinates).
        let big = ids_pattern(16, 16);
        let out = seg_map(&png(&DynamicImage::ImageRgb8(colour_image(&big))), 8).unwrap();
        assert_eq!(out, Array2::from_shape_fn((8, 8), |(y, x)| big[[2 * y + 1, 2 * x + 1]]));
    }

    #[test]
    fn grey_images_are_class_ids_including_16_bit_raw_values() {
        let ids = ids_pattern(10, 10);
        let grey = GrayImage::from_fn(10, 10, |x, y| Luma([ids[[y as usize, x as usize]]]));
        assert_eq!(seg_map(&png(&DynamicImage::ImageLuma8(grey)), 10).unwrap(), ids);

        // 16-bit: raw values 0..5, not 8-bit scaled (an 8-bit conversion would make them all 0).
        let grey16 =
            ImageBuffer::<Luma<u16>, _>::from_fn(10, 10, |x, y| Luma([u16::from(ids[[y as usize, x as usize]])]));
        let bytes = png(&DynamicImage::ImageLuma16(grey16.clone()));
        assert_eq!(seg_map(&bytes, 10).unwrap(), ids);

        // 16-bit id 257 would be 1 after an 8-bit conversion: it must be out of range instead.
        let mut bad = grey16;
        bad.put_pixel(4, 7, Luma([257]));
        let err = seg_map(&png(&DynamicImage::ImageLuma16(bad)), 10).unwrap_err();
        assert_eq!(err.code().as_str(), "class_id_out_of_range");
        assert_eq!(err, FrameError::ClassIdOutOfRange { id: 257, x: 4, y: 7, classes: 6 });

        // 8-bit id 6 with 6 classes.
        let mut bad8 = GrayImage::from_pixel(3, 3, Luma([1]));
        bad8.put_pixel(2, 0, Luma([6]));
        let err = seg_map(&png(&DynamicImage::ImageLuma8(bad8)), 3).unwrap_err();
        assert_eq!(err, FrameError::ClassIdOutOfRange { id: 6, x: 2, y: 0, classes: 6 });

        // Grey + alpha: alpha ignored.
        let la = ImageBuffer::<image::LumaA<u8>, _>::from_fn(10, 10, |x, y| {
            image::LumaA([ids[[y as usize, x as usize]], (x * 20) as u8])
        });
        assert_eq!(seg_map(&png(&DynamicImage::ImageLumaA8(la)), 10).unwrap(), ids);
    }

    #[test]
    fn low_bit_depth_grey_ids_are_not_scaled() {
        // 1-bit grey: the png crate expands 1 to 255; the decoder must give back id 1.
        let values: Vec<u8> = (0..16).map(|i| (i % 3 == 0) as u8).collect();
        let rows: Vec<Vec<u8>> = (0..16).map(|_| pack_bits(&values, 1)).collect();
        let ids = seg_map(&raw_png(16, 16, 1, 0, &[], &rows), 16).unwrap();
        assert_eq!(ids.row(5).to_vec(), values);
        // 2-bit grey ids 0..3.
        let values: Vec<u8> = (0..8).map(|i| (i % 4) as u8).collect();
        let rows: Vec<Vec<u8>> = (0..8).map(|_| pack_bits(&values, 2)).collect();
        let ids = seg_map(&raw_png(8, 8, 2, 0, &[], &rows), 8).unwrap();
        assert_eq!(ids.row(0).to_vec(), values);
    }

    #[test]
    fn jpeg_segmentation_decodes_within_tolerance() {
        // Regions aligned to JPEG's 16x16 blocks (4:2:0 chroma) survive quality 95 compression.
        let ids = Array2::from_shape_fn((64, 64), |(y, x)| ((x / 16 + 2 * (y / 16)) % PALETTE.len()) as u8);
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 95)
            .write_image(colour_image(&ids).as_raw(), 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
        let out = seg_map(&bytes, 64).unwrap();
        let same = out.iter().zip(ids.iter()).filter(|(a, b)| a == b).count();
        assert_eq!(same, 64 * 64, "{} of 4096 pixels differ", 64 * 64 - same);
        // And resized.
        let out = seg_map(&bytes, 16).unwrap();
        assert_eq!(out, Array2::from_shape_fn((16, 16), |(y, x)| ids[[4 * y + 2, 4 * x + 2]]));
    }

}
