//! Untrusted PNG / JPEG bytes -> an oriented image: size and pixel limits checked on the header
//! before any pixel is decoded, the `image` decoder's own limits set, EXIF orientation applied,
//! and a decoder panic turned into an error.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::error::LimitErrorKind;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader};

use super::{FrameError, FrameLimits};

/// A decoded, oriented image.
pub(super) struct Decoded {
    pub(super) image: DynamicImage,
    /// Divisor that undoes the png crate's expansion of 1/2/4-bit grey to 8 bits (1 otherwise).
    pub(super) grey_scale: u8,
}

/// Check sizes, guess the format, decode with limits, apply the EXIF orientation.
pub(super) fn decode_image(bytes: &[u8], limits: &FrameLimits) -> Result<Decoded, FrameError> {
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(FrameError::TooLarge { bytes: bytes.len(), max_bytes: limits.max_bytes });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|_| FrameError::NotAnImage)?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => return Err(FrameError::Unsupported { message: format!("{other:?} format") }),
        None => return Err(FrameError::NotAnImage),
    }
    reader.limits(limits.image_limits());
    // The decoders are well fuzzed, but this runs on untrusted input in a long-lived service: a
    // panic in a decoder becomes a `Corrupt` error for this frame instead of killing a thread.
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<DynamicImage, FrameError> {
        // Reads the header only; the limits' width / height caps are checked here.
        let mut decoder = reader.into_decoder().map_err(|e| map_image_error(e, limits))?;
        let (width, height) = decoder.dimensions();
        if width == 0 || height == 0 {
            return Err(FrameError::Corrupt { message: format!("image is {width}x{height} pixels") });
        }
        if u64::from(width) * u64::from(height) > limits.max_pixels {
            return Err(FrameError::TooManyPixels { width, height, max_pixels: limits.max_pixels });
        }
        if decoder.total_bytes() > limits.max_alloc() {
            return Err(FrameError::MemoryLimit {
                message: format!("{} bytes for the decoded image", decoder.total_bytes()),
                max_alloc: limits.max_alloc(),
            });
        }
        // Broken metadata does not make the pixels unusable: fall back to no transform.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let mut image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, limits))?;
        image.apply_orientation(orientation);
        Ok(image)
    }));
    let image = match result {
        Ok(r) => r?,
        Err(_) => return Err(FrameError::Corrupt { message: "the decoder failed unexpectedly".into() }),
    };
    Ok(Decoded { image, grey_scale: png_grey_scale(bytes) })
}

fn map_image_error(e: ImageError, limits: &FrameLimits) -> FrameError {
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => {
                FrameError::DimensionLimit { message: l.to_string(), max_pixels: limits.max_pixels }
            }
            _ => FrameError::MemoryLimit { message: l.to_string(), max_alloc: limits.max_alloc() },
        },
        ImageError::Unsupported(u) => FrameError::Unsupported { message: u.to_string() },
        other => FrameError::Corrupt { message: other.to_string() },
    }
}

/// For a grey PNG of bit depth 1, 2 or 4, the factor the png crate multiplied the values by when
/// expanding them to 8 bits (255, 85, 17); 1 for anything else.
fn png_grey_scale(bytes: &[u8]) -> u8 {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 26 || !bytes.starts_with(SIGNATURE) || &bytes[12..16] != b"IHDR" {
        return 1;
    }
    let (bit_depth, colour_type) = (bytes[24], bytes[25]);
    // Colour types 0 (grey) and 4 (grey + alpha; only 8/16 bits are legal there).
    match (colour_type, bit_depth) {
        (0 | 4, 1) => 255,
        (0 | 4, 2) => 85,
        (0 | 4, 4) => 17,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::{DynamicImage, ImageEncoder};
    use ndarray::Array2;

    use super::super::decode_frame;
    use super::super::fixtures::*;
    use super::super::test_png::raw_png;
    use super::*;

    #[test]
    fn exif_orientation_is_applied() {
        // EXIF (TIFF, big endian) with one IFD entry: Orientation (0x0112) = 6, rotate 90 clockwise.
        let exif: Vec<u8> = vec![
            b'M', b'M', 0, 42, 0, 0, 0, 8, // header, IFD at 8
            0, 1, // one entry
            0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // tag, SHORT, count 1, value 6
            0, 0, 0, 0, // no next IFD
        ];
        let ids = ids_pattern(6, 6);
        let img = colour_image(&ids);
        let mut bytes = Vec::new();
        let mut enc = PngEncoder::new(&mut bytes);
        enc.set_exif_metadata(exif.clone()).unwrap();
        enc.write_image(img.as_raw(), 6, 6, image::ExtendedColorType::Rgb8).unwrap();
        let out = seg_map(&bytes, 6).unwrap();
        // Clockwise: the source's left column (top to bottom) becomes the top row (right to left).
        let expected = Array2::from_shape_fn((6, 6), |(y, x)| ids[[5 - x, y]]);
        assert_eq!(out, expected);
        assert_ne!(out, ids);

        // JPEG carries it in APP1 too.
        let block = Array2::from_shape_fn((32, 32), |(y, x)| u8::from(x < 16 && y < 16));
        let mut jpeg = Vec::new();
        let mut enc = JpegEncoder::new_with_quality(&mut jpeg, 95);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(colour_image(&block).as_raw(), 32, 32, image::ExtendedColorType::Rgb8).unwrap();
        let out = seg_map(&jpeg, 32).unwrap();
        // Top-left block rotated clockwise lands top-right.
        assert_eq!(out[[4, 28]], 1);
        assert_eq!(out[[4, 4]], 0);
    }

    // --- hostile input ----------------------------------------------------------------------------

    fn must_fail(bytes: &[u8], code: &str) {
        for m in [seg(), sketch()] {
            let err = decode_frame(bytes, &m, 32, &lim()).unwrap_err();
            assert_eq!(err.code().as_str(), code, "{err}");
            assert!(!err.to_string().is_empty());
        }
    }

    /// Decode everything: any result is fine, a panic (or a hang) is not.
    fn no_panic(bytes: &[u8]) {
        for m in [seg(), sketch()] {
            let _ = decode_frame(bytes, &m, 32, &lim());
        }
    }

    #[test]
    fn size_and_format_errors() {
        must_fail(&[], "empty_frame");
        let small = FrameLimits::new(100, 1 << 20);
        let bytes = png(&DynamicImage::ImageLuma8(strokes(64, 64, 255, 0)));
        assert!(bytes.len() > 100);
        assert_eq!(decode_frame(&bytes, &sketch(), 32, &small).unwrap_err().code().as_str(), "frame_too_large");
        let few = FrameLimits::new(1 << 20, 1000);
        let err = decode_frame(&bytes, &sketch(), 32, &few).unwrap_err();
        assert_eq!(err, FrameError::TooManyPixels { width: 64, height: 64, max_pixels: 1000 });
        must_fail(b"hello, this is not an image at all", "not_an_image");
        must_fail(&[0u8; 100], "not_an_image");
        // Other formats are refused even though `image` could decode them.
        // (The build enables only the PNG and JPEG codecs, so these are the formats' magic bytes.)
        must_fail(b"GIF89a\x04\x00\x04\x00\x80\x00\x00", "unsupported_image");
        must_fail(b"BM\x46\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00", "unsupported_image");
        // A bad output size is refused before decoding.
        assert_eq!(decode_frame(&bytes, &sketch(), 0, &lim()).unwrap_err().code().as_str(), "invalid_size");
    }

    #[test]
    fn huge_declared_dimensions_are_refused_before_decoding() {
        // Valid PNG header (correct CRC) claiming 100000 x 100000 with a tiny IDAT.
        let bytes = raw_png(100_000, 100_000, 8, 2, &[], &[vec![0; 3]]);
        let err = decode_frame(&bytes, &seg(), 32, &lim()).unwrap_err();
        assert_eq!(err, FrameError::TooManyPixels { width: 100_000, height: 100_000, max_pixels: lim().max_pixels });
        // One side alone beyond the limit: the decoder's own width cap.
        must_fail(&raw_png(20_000_000, 1, 8, 0, &[], &[vec![0; 4]]), "too_many_pixels");
        must_fail(&raw_png(u32::MAX >> 1, u32::MAX >> 1, 16, 6, &[], &[vec![0; 8]]), "too_many_pixels");
        // Within the pixel limit but no data: fails cleanly.
        no_panic(&raw_png(4000, 4000, 16, 6, &[], &[vec![0; 8]]));
        // Zero-size PNG.
        let err = decode_frame(&raw_png(0, 10, 8, 0, &[], &[]), &seg(), 32, &lim()).unwrap_err();
        assert_eq!(err.code().as_str(), "corrupt_image", "{err}");

        // JPEG whose SOF claims 65500 x 65500.
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 80)
            .write_image(&[128u8; 8 * 8 * 3], 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
        let err = decode_frame(&jpeg, &seg(), 32, &lim()).unwrap_err();
        assert_eq!(err, FrameError::TooManyPixels { width: 65500, height: 65500, max_pixels: lim().max_pixels });
        // And zero-size JPEG.
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0, 0, 0, 8]);
        assert!(decode_frame(&jpeg, &seg(), 32, &lim()).is_err());
    }

    #[test]
    fn truncated_corrupt_and_random_bytes_never_panic() {
        let ids = ids_pattern(20, 20);
        let png_bytes = png(&DynamicImage::ImageRgb8(colour_image(&ids)));
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .write_image(colour_image(&ids).as_raw(), 20, 20, image::ExtendedColorType::Rgb8)
            .unwrap();
        let palette_png = raw_png(4, 4, 8, 3, &[(b"PLTE", vec![0, 0, 0])], &vec![vec![0, 1, 2, 200]; 4]);
        for bytes in [&png_bytes, &jpeg, &palette_png] {
            // Every truncation.
            for len in 0..bytes.len() {
                no_panic(&bytes[..len]);
            }
            // Truncated just before the end: an error, not a partial image.
            if bytes[0] == 0x89 {
                assert!(decode_frame(&bytes[..bytes.len() - 20], &seg(), 32, &lim()).is_err());
            }
            // Byte flips everywhere.
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x5A;
                no_panic(&b);
            }
        }
        // Random bytes, bare and behind PNG / JPEG signatures.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..300 {
            let len = (next() % 2048) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match round % 3 {
                0 => {}
                1 => b.splice(0..0, b"\x89PNG\r\n\x1a\n".iter().copied()).for_each(drop),
                _ => b.splice(0..0, [0xFF, 0xD8, 0xFF]).for_each(drop),
            }
            no_panic(&b);
        }
        // Palette index beyond the palette: error or black, never a panic (checked above); and a
        // palette PNG whose colours are not classes is not a label map.
        let bytes = raw_png(2, 1, 8, 3, &[(b"PLTE", vec![1, 2, 3, 255, 0, 255])], &[vec![0, 1]]);
        assert_eq!(seg_map(&bytes, 2).unwrap_err().code().as_str(), "not_a_segmentation_map");
    }
}
