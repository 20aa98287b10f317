//! Segmentation frames: class ids from grey values or from the model's palette colours, resized
//! with nearest neighbour only (bilinear would invent classes).

use image::DynamicImage;
use ndarray::Array2;

use super::FrameError;
use super::decode::Decoded;
use super::palette::{Certainty, Palette};
use crate::contract::{ModalityInfo, ModalityMap};

/// The class ids of a decoded segmentation frame at `[size, size]` (see [`super::decode_frame`]).
pub(super) fn decode(decoded: &Decoded, modality: &ModalityInfo, size: usize, max_far_share: f32) -> Result<ModalityMap, FrameError> {
    let ids = class_ids(decoded, modality, max_far_share)?;
    Ok(ModalityMap::Segmentation(resize_nearest(&ids, size)))
}

/// Class ids `[H, W]` of a segmentation frame at its own resolution.
fn class_ids(decoded: &Decoded, modality: &ModalityInfo, max_far_share: f32) -> Result<Array2<u8>, FrameError> {
    let img = &decoded.image;
    let (w, h) = (img.width(), img.height());
    // Ids are u8 in `ModalityMap`: at most 256 classes can be addressed.
    let classes = modality.channels.min(256);
    let ids = match img {
        DynamicImage::ImageLuma8(b) => grey_ids(b.as_raw(), 1, w, classes, u32::from(decoded.grey_scale))?,
        DynamicImage::ImageLumaA8(b) => grey_ids(b.as_raw(), 2, w, classes, u32::from(decoded.grey_scale))?,
        DynamicImage::ImageLuma16(b) => grey_ids(b.as_raw(), 1, w, classes, 1)?,
        DynamicImage::ImageLumaA16(b) => grey_ids(b.as_raw(), 2, w, classes, 1)?,
        DynamicImage::ImageRgb8(b) => colour_ids(b.as_raw(), 3, w, modality, max_far_share, |v| v)?,
        DynamicImage::ImageRgba8(b) => colour_ids(b.as_raw(), 4, w, modality, max_far_share, |v| v)?,
        DynamicImage::ImageRgb16(b) => colour_ids(b.as_raw(), 3, w, modality, max_far_share, to_u8)?,
        DynamicImage::ImageRgba16(b) => colour_ids(b.as_raw(), 4, w, modality, max_far_share, to_u8)?,
        other => colour_ids(other.to_rgb8().as_raw(), 3, w, modality, max_far_share, |v| v)?,
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

/// Class ids of colour pixels through the palette of `modality` (see [`super::decode_frame`]):
/// sure pixels keep their nearest class, the others (far, or a blend of two other classes) take
/// the majority class of their nearest sure pixels. More than `max_far_share` far pixels is not
/// a label map.
fn colour_ids<T: Copy>(
    raw: &[T],
    stride: usize,
    width: u32,
    modality: &ModalityInfo,
    max_far_share: f32,
    to8: impl Fn(T) -> u8,
) -> Result<Vec<u8>, FrameError> {
    let mut palette = Palette::new(&modality.classes[..modality.classes.len().min(modality.channels)]);
    let matches: Vec<(u8, Certainty)> = raw.chunks_exact(stride).map(|px| palette.lookup([to8(px[0]), to8(px[1]), to8(px[2])])).collect();
    let far = matches.iter().filter(|m| m.1 == Certainty::Far).count();
    let far_share = far as f32 / matches.len().max(1) as f32;
    if palette.is_empty() || far_share > max_far_share {
        return Err(FrameError::NotASegmentationMap { far_share, max_far_share, classes: modality.classes.len() });
    }
    let (mut ids, sure): (Vec<u8>, Vec<bool>) = matches.into_iter().map(|(id, c)| (id, c == Certainty::Sure)).unzip();
    fill_from_neighbours(&mut ids, sure, width.max(1) as usize);
    Ok(ids)
}

/// Give every pixel that is not `sure` the majority class of its sure 8-neighbours, in waves
/// outwards from the sure pixels (a pixel reached in wave k takes the majority of the neighbours
/// settled before wave k; ties go to its own nearest class when tied, else the lowest id), so
/// that a band of unsure pixels between two classes is split in its middle. Without any sure
/// pixel the nearest classes stay. `ids` and `sure` are row-major `[H, W]`.
fn fill_from_neighbours(ids: &mut [u8], mut sure: Vec<bool>, width: usize) {
    let height = ids.len() / width;
    let neighbours = |i: usize| {
        let (x, y) = ((i % width) as isize, (i / width) as isize);
        (-1..=1isize).flat_map(move |dy| (-1..=1isize).map(move |dx| (x + dx, y + dy))).filter_map(move |(nx, ny)| {
            let inside = (nx, ny) != (x, y) && nx >= 0 && ny >= 0 && (nx as usize) < width && (ny as usize) < height;
            inside.then_some(ny as usize * width + nx as usize)
        })
    };
    let mut queued = sure.clone();
    let mut wave: Vec<usize> = (0..ids.len()).filter(|&i| !sure[i] && neighbours(i).any(|n| sure[n])).collect();
    let mut winners: Vec<u8> = Vec::new();
    while !wave.is_empty() {
        for &i in &wave {
            queued[i] = true;
        }
        winners.clear();
        winners.extend(wave.iter().map(|&i| majority(neighbours(i).filter(|&n| sure[n]).map(|n| ids[n]), ids[i])));
        for (&i, &id) in wave.iter().zip(&winners) {
            ids[i] = id;
            sure[i] = true;
        }
        let mut next = Vec::new();
        for &i in &wave {
            for n in neighbours(i) {
                if !queued[n] {
                    queued[n] = true;
                    next.push(n);
                }
            }
        }
        wave = next;
    }
}

/// The most frequent of `ids` (`own` on a tie it is part of, else the lowest tied id).
fn majority(ids: impl Iterator<Item = u8>, own: u8) -> u8 {
    let mut counts = [0u8; 256];
    for id in ids {
        counts[id as usize] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0);
    if counts[own as usize] == top { own } else { counts.iter().position(|&c| c == top).map_or(own, |i| i as u8) }
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
    use image::{GrayImage, ImageBuffer, ImageEncoder, Luma, Rgb, RgbImage, RgbaImage, Rgba};

    use super::super::fixtures::*;
    use super::super::test_png::{pack_bits, raw_png};
    use super::super::{FrameLimits, decode_frame};
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
    fn far_and_blended_pixels_take_their_neighbourhood_class() {
        let mut img = colour_image(&Array2::from_elem((5, 5), 2u8)); // mountain [120, 100, 80]
        img.put_pixel(1, 1, Rgb([120 + 23, 100 + 23, 80 + 23])); // 39.8 away: still mountain
        img.put_pixel(3, 1, Rgb([120 + 30, 100 + 30, 80])); // 42.4 away: far
        img.put_pixel(2, 3, Rgb([255, 0, 255])); // far from everything
        let ids = seg_map(&png(&DynamicImage::ImageRgb8(img)), 5).unwrap();
        assert!(ids.iter().all(|&id| id == 2), "{ids:?}");

        // Left half grass, right half water, a 3-pixel soft edge between them whose middle
        // column is a far mix: it is split in the middle, not given to a third class.
        let ids = Array2::from_shape_fn((6, 20), |(_, x)| if x < 7 { 3u8 } else { 4 });
        let mut img = colour_image(&ids);
        let (grass, water) = (PALETTE[3].1, PALETTE[4].1);
        let mix = |a: f32| Rgb(std::array::from_fn(|k| (f32::from(grass[k]) * (1.0 - a) + f32::from(water[k]) * a).round() as u8));
        for y in 0..6 {
            img.put_pixel(6, y, mix(0.25));
            img.put_pixel(7, y, mix(0.5));
            img.put_pixel(8, y, mix(0.75));
        }
        let out = seg_map(&png(&DynamicImage::ImageRgb8(img)), 20).unwrap();
        for row in out.rows() {
            let boundary = row.iter().position(|&id| id == 4).unwrap();
            assert!((7..=8).contains(&boundary) && row.iter().skip(boundary).all(|&id| id == 4), "{out:?}");
        }
    }

    /// A landscape label map `[96, 96]`: sky, a wavy grass horizon, a water disc, a mountain
    /// triangle, a thin diagonal sand path and a cloud.
    fn landscape() -> Array2<u8> {
        Array2::from_shape_fn((96, 96), |(y, x)| {
            let (xf, yf) = (x as f32, y as f32);
            let horizon = 60.0 + 6.0 * (xf / 9.0).sin();
            if (xf - 70.0).powi(2) + (yf - 75.0).powi(2) < 14.0f32.powi(2) {
                4 // water
            } else if (xf - yf * 0.5 - 10.0).abs() < 2.5 && yf > horizon {
                5 // sand path
            } else if yf > horizon {
                3 // grass
            } else if yf > 25.0 && (xf - 35.0).abs() < (yf - 25.0) * 0.9 {
                2 // mountain
            } else if (xf - 75.0).powi(2) / 3.0 + (yf - 15.0).powi(2) < 60.0 {
                1 // cloud
            } else {
                0 // sky
            }
        })
    }

    /// Pixels of `out` that differ from `hard` and are not within one pixel of a boundary of
    /// `hard` (a pixel whose 3x3 neighbourhood holds another class).
    fn off_boundary_errors(out: &Array2<u8>, hard: &Array2<u8>) -> Vec<(usize, usize)> {
        let (h, w) = hard.dim();
        let near_boundary = |y: usize, x: usize| {
            (y.saturating_sub(1)..=(y + 1).min(h - 1))
                .any(|ny| (x.saturating_sub(1)..=(x + 1).min(w - 1)).any(|nx| hard[[ny, nx]] != hard[[y, x]]))
        };
        hard.indexed_iter().filter(|&((y, x), &id)| out[[y, x]] != id && !near_boundary(y, x)).map(|(p, _)| p).collect()
    }

    #[test]
    fn soft_brush_maps_keep_their_boundaries_in_png_and_jpeg() {
        let hard = landscape();
        // A soft brush: every edge blurred over about 6 pixels (Gaussian, sigma 1.5).
        let soft = imageproc::filter::gaussian_blur_f32(&colour_image(&hard), 1.5);
        let far = soft.pixels().filter(|p| PALETTE.iter().all(|(_, c)| (0..3).map(|k| (f32::from(p[k]) - f32::from(c[k])).powi(2)).sum::<f32>() > 1600.0)).count();
        assert!(far > 200, "the blur must make far pixels, got {far}");
        let mut frames = vec![("png".to_string(), png(&DynamicImage::ImageRgb8(soft.clone())))];
        for quality in [70, 80, 95] {
            let mut bytes = Vec::new();
            JpegEncoder::new_with_quality(&mut bytes, quality)
                .write_image(soft.as_raw(), 96, 96, image::ExtendedColorType::Rgb8)
                .unwrap();
            frames.push((format!("jpeg q{quality}"), bytes));
        }
        for (name, bytes) in frames {
            let out = seg_map(&bytes, 96).unwrap_or_else(|e| panic!("{name}: {e}"));
            let errors = off_boundary_errors(&out, &hard);
            assert!(errors.is_empty(), "{name}: {} pixels off the 1-pixel band, e.g. {:?}", errors.len(), &errors[..errors.len().min(8)]);
            // The thin path survives as a class.
            assert!(out.iter().filter(|&&id| id == 5).count() > 100, "{name}");
        }
    }

    #[test]
    fn a_photo_is_not_a_segmentation_map() {
        // A photo-like frame: smooth gradients with texture, mostly far from every class colour.
        let photo = RgbImage::from_fn(64, 48, |x, y| {
            let t = ((x * 37 + y * 11) % 23) as u8;
            Rgb([(x * 3) as u8 + t, (100 + y * 2) as u8, (180 - x) as u8 + t / 2])
        });
        let bytes = png(&DynamicImage::ImageRgb8(photo));
        let err = seg_map(&bytes, 16).unwrap_err();
        assert_eq!(err.code().as_str(), "not_a_segmentation_map");
        let FrameError::NotASegmentationMap { far_share, max_far_share, classes } = err else { panic!("{err:?}") };
        assert!(far_share > 0.5 && max_far_share == 0.2 && classes == 6, "{far_share} {max_far_share}");
        assert!(err.to_string().contains(&format!("{:.1} %", 100.0 * far_share)), "{err}");
        // The share is configurable: with every pixel allowed far the frame decodes.
        let lenient = FrameLimits { max_far_share: 1.0, ..lim() };
        assert!(decode_frame(&bytes, &seg(), 16, &lenient).is_ok());
        // 10 % far pixels pass at the default 20 %, and fail at 5 %.
        let mut img = colour_image(&Array2::from_elem((10, 10), 0u8));
        for x in 0..10 {
            img.put_pixel(x, 4, Rgb([255, 0, 255]));
        }
        let bytes = png(&DynamicImage::ImageRgb8(img));
        assert!(seg_map(&bytes, 10).unwrap().iter().all(|&id| id == 0));
        let strict = FrameLimits { max_far_share: 0.05, ..lim() };
        assert_eq!(decode_frame(&bytes, &seg(), 10, &strict).unwrap_err().code().as_str(), "not_a_segmentation_map");
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
