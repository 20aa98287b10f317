//! Frame decoding: untrusted PNG / JPEG bytes -> a [`ModalityMap`] at the model's size.
//!
//! Frames arrive over MQTT from cameras and tablets, so everything here treats its input as
//! hostile: the byte count and the pixel count (read from the header, before any pixel is decoded)
//! are bounded by [`FrameLimits`], the `image` decoder gets width, height and allocation limits
//! before it decodes, and every failure is a [`FrameError`], never a panic.
//!
//! Pitfalls handled (DESIGN.md, "Known library pitfalls", image 0.25):
//! - the default `image::Limits` cap allocations only: width and height caps are set explicitly;
//! - `decode()` ignores EXIF orientation: it is read from the decoder and applied;
//! - palette PNGs decode to colours: colours are mapped back to class ids through the model's palette;
//! - 16-bit grey label maps keep their raw values (no 8-bit conversion);
//! - RGBA sketches with a transparent background hide black RGB: alpha decides the background;
//! - label maps are resized with nearest neighbour only (bilinear would invent classes).

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::error::LimitErrorKind;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageFormat, ImageReader, Luma};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::contract::{ClassInfo, ModalityInfo, ModalityKind, ModalityMap};

/// Largest Euclidean RGB distance (0-255 per channel) at which a pixel still takes the class of
/// the nearest palette colour. Palette colours of a model should be further apart than twice this.
pub const PALETTE_TOLERANCE: f32 = 40.0;

/// Largest output side accepted for `size` (a sanity bound on the model's image size).
pub const MAX_OUTPUT_SIZE: usize = 1 << 16;

/// Pixels with alpha below this (alpha in [0, 1]) are transparent.
const TRANSPARENT_BELOW: f32 = 0.5;

/// Bins of the luminance histogram used for the sketch background median (one per 16-bit level).
const LUMA_BINS: usize = 1 << 16;

/// Largest decoded bytes per pixel of a PNG or JPEG (RGBA, 16 bits per channel).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Allocation headroom given to the decoder beyond the output buffer (row buffers, zlib, ICC, EXIF).
const DECODER_HEADROOM: u64 = 4 << 20;

/// Resource limits for decoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameLimits {
    /// Largest encoded frame in bytes (default 8 MiB).
    pub max_bytes: usize,
    /// Largest width x height in pixels, checked on the header before decoding (default 16 Mpx,
    /// 4096 x 4096). Decoding allocates at most about 8 bytes per pixel for the image plus a few
    /// bytes per pixel for the intermediate maps.
    pub max_pixels: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl FrameLimits {
    /// 8 MiB per frame, 16 Mpx (4096 x 4096).
    pub const DEFAULT: Self = Self { max_bytes: 8 << 20, max_pixels: 4096 * 4096 };

    /// Limits of `max_bytes` encoded bytes and `max_pixels` decoded pixels.
    pub fn new(max_bytes: usize, max_pixels: u64) -> Self {
        Self { max_bytes, max_pixels }
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

/// Why a frame could not be decoded. Messages are meant for the `error` topic; [`FrameError::code`]
/// gives the short snake_case code that goes with them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// The frame has no bytes.
    #[error("empty frame (0 bytes)")]
    Empty,
    /// The encoded frame is larger than [`FrameLimits::max_bytes`].
    #[error("frame is {bytes} bytes, more than the limit of {max_bytes} bytes")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The header declares more than [`FrameLimits::max_pixels`] pixels.
    #[error("image is {width}x{height} pixels, more than the limit of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, max_pixels: u64 },
    /// The decoder refused the image dimensions (one side alone exceeds the pixel limit).
    #[error("image dimensions exceed the limit of {max_pixels} pixels: {message}")]
    DimensionLimit { message: String, max_pixels: u64 },
    /// The decoder needed more memory than allowed.
    #[error("decoding would need more memory than allowed ({max_alloc} bytes): {message}")]
    MemoryLimit { message: String, max_alloc: u64 },
    /// The bytes are not a recognised image format.
    #[error("not an image: expected PNG or JPEG bytes")]
    NotAnImage,
    /// An image format other than PNG / JPEG, or a variant of them the decoder cannot read.
    #[error("unsupported image: {message} (PNG and JPEG are supported)")]
    Unsupported { message: String },
    /// A PNG / JPEG that is truncated, corrupt or has zero width or height.
    #[error("corrupt image: {message}")]
    Corrupt { message: String },
    /// The model's image size is 0 or absurdly large (a configuration error, not a frame error).
    #[error("invalid output size {size} (must be 1..={MAX_OUTPUT_SIZE})")]
    InvalidSize { size: usize },
    /// A segmentation pixel whose colour is not within [`PALETTE_TOLERANCE`] of any class colour.
    #[error(
        "pixel (x={x}, y={y}) has colour #{:02x}{:02x}{:02x}, not within {PALETTE_TOLERANCE} of any class colour \
         (nearest: {nearest}, distance {distance:.1})",
        color[0], color[1], color[2]
    )]
    UnknownClassColour { color: [u8; 3], x: u32, y: u32, nearest: String, distance: f32 },
    /// A single-channel segmentation pixel whose value is not a class id of the model.
    #[error("pixel (x={x}, y={y}) has class id {id}, but the model has {classes} classes (ids 0..={max})", max = .classes.saturating_sub(1))]
    ClassIdOutOfRange { id: u32, x: u32, y: u32, classes: usize },
}

impl FrameError {
    /// Short snake_case code for the `error` topic's `code` field.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::Empty => "empty_frame",
            FrameError::TooLarge { .. } => "frame_too_large",
            FrameError::TooManyPixels { .. } | FrameError::DimensionLimit { .. } => "too_many_pixels",
            FrameError::MemoryLimit { .. } => "memory_limit",
            FrameError::NotAnImage => "not_an_image",
            FrameError::Unsupported { .. } => "unsupported_image",
            FrameError::Corrupt { .. } => "corrupt_image",
            FrameError::InvalidSize { .. } => "invalid_size",
            FrameError::UnknownClassColour { .. } => "unknown_class_colour",
            FrameError::ClassIdOutOfRange { .. } => "class_id_out_of_range",
        }
    }
}

/// Decode one frame of `modality` into a map of exactly `[size, size]`.
///
/// `bytes` is a PNG or JPEG of any size (within `limits`), in any colour type and bit depth; its
/// EXIF orientation is applied first.
///
/// - Segmentation: returns [`ModalityMap::Segmentation`] with class ids `< modality.channels`.
///   Single-channel images (grey, grey + alpha; 1 to 16 bits) hold the class id directly (16-bit
///   values are used raw, low bit depths are not scaled); colour images (RGB, RGBA, palette PNGs)
///   map each pixel to the nearest `modality.classes[i].color` within [`PALETTE_TOLERANCE`]. Alpha
///   is ignored. The id map is resized with nearest neighbour, so only ids present in the frame
///   appear in the output. Label maps should be lossless (PNG): JPEG artefacts at class boundaries
///   may exceed the tolerance.
/// - Sketch: returns [`ModalityMap::Sketch`] with stroke strength in `[0, 1]` (1 on a stroke, 0 on
///   the background). Transparent pixels are background. When most pixels are transparent the
///   strokes are the opaque pixels (strength = alpha, whatever their colour); otherwise the
///   background level `B` is the median luminance of the opaque pixels: dark strokes on a light
///   background (`B >= 0.5`) give `(B - L) / B`, light strokes on a dark background give
///   `(L - B) / (1 - B)`, each times alpha and clamped to `[0, 1]`. A blank frame gives all zeros.
///   The map is resized with a triangle (bilinear, area-aware when shrinking) filter.
///
/// # Errors
/// [`FrameError`]: empty or oversized input, more than `limits.max_pixels` pixels (checked on the
/// header, before decoding), not an image, a format other than PNG / JPEG, corrupt or truncated
/// data, `size` outside `1..=MAX_OUTPUT_SIZE`, and for segmentations an unknown colour or class id
/// (naming the pixel). Never panics on any byte string.
pub fn decode_frame(
    bytes: &[u8],
    modality: &ModalityInfo,
    size: usize,
    limits: &FrameLimits,
) -> Result<ModalityMap, FrameError> {
    if size == 0 || size > MAX_OUTPUT_SIZE {
        return Err(FrameError::InvalidSize { size });
    }
    let decoded = decode_image(bytes, limits)?;
    match modality.kind {
        ModalityKind::Segmentation => {
            let ids = class_ids(&decoded, modality)?;
            Ok(ModalityMap::Segmentation(resize_nearest(&ids, size)))
        }
        ModalityKind::Sketch => {
            let (w, h) = (decoded.image.width(), decoded.image.height());
            let strokes = stroke_strength(&decoded.image);
            Ok(ModalityMap::Sketch(resize_smooth(strokes, w, h, size)))
        }
    }
}

/// A decoded, oriented image.
struct Decoded {
    image: DynamicImage,
    /// Divisor that undoes the png crate's expansion of 1/2/4-bit grey to 8 bits (1 otherwise).
    grey_scale: u8,
}

/// Check sizes, guess the format, decode with limits, apply the EXIF orientation.
fn decode_image(bytes: &[u8], limits: &FrameLimits) -> Result<Decoded, FrameError> {
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

/// (luminance, alpha) of every pixel, both in [0, 1], row-major.
fn luma_alpha(img: &DynamicImage) -> Box<dyn Iterator<Item = (f32, f32)> + '_> {
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

fn luma_bin(l: f32) -> usize {
    // NaN casts to 0.
    ((l.clamp(0.0, 1.0) * (LUMA_BINS - 1) as f32).round() as usize).min(LUMA_BINS - 1)
}

/// Stroke strength in [0, 1] of every pixel (row-major), see [`decode_frame`].
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
    let clamp = |v: f32| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
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
    let side = size as u32; // size <= MAX_OUTPUT_SIZE
    let resized = if (w as usize, h as usize) == (size, size) {
        strokes
    } else {
        match ImageBuffer::<Luma<f32>, Vec<f32>>::from_raw(w, h, strokes) {
            Some(buf) => image::imageops::resize(&buf, side, side, FilterType::Triangle).into_raw(),
            None => vec![0.0; size * size],
        }
    };
    let mut map = Array2::from_shape_vec((size, size), resized).unwrap_or_else(|_| Array2::zeros((size, size)));
    map.mapv_inplace(|v| if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) });
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::codecs::png::PngEncoder;
    use image::{GrayImage, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};

    const PALETTE: [(&str, [u8; 3]); 6] = [
        ("sky", [135, 206, 235]),
        ("cloud", [255, 255, 255]),
        ("mountain", [120, 100, 80]),
        ("grass", [50, 160, 60]),
        ("water", [30, 80, 200]),
        ("sand", [230, 200, 120]),
    ];

    fn seg() -> ModalityInfo {
        ModalityInfo {
            name: "segmentation".into(),
            kind: ModalityKind::Segmentation,
            channels: PALETTE.len(),
            classes: PALETTE.iter().map(|(n, c)| ClassInfo { name: n.to_string(), color: *c }).collect(),
        }
    }

    fn sketch() -> ModalityInfo {
        ModalityInfo { name: "sketch".into(), kind: ModalityKind::Sketch, channels: 1, classes: vec![] }
    }

    fn lim() -> FrameLimits {
        FrameLimits::default()
    }

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn seg_map(bytes: &[u8], size: usize) -> Result<Array2<u8>, FrameError> {
        match decode_frame(bytes, &seg(), size, &lim())? {
            ModalityMap::Segmentation(ids) => Ok(ids),
            other => panic!("expected a segmentation, got {other:?}"),
        }
    }

    fn sketch_map(bytes: &[u8], size: usize) -> Array2<f32> {
        match decode_frame(bytes, &sketch(), size, &lim()).unwrap() {
            ModalityMap::Sketch(s) => s,
            other => panic!("expected a sketch, got {other:?}"),
        }
    }

    /// An id pattern with every class, irregular enough to catch transposes and flips.
    fn ids_pattern(w: usize, h: usize) -> Array2<u8> {
        Array2::from_shape_fn((h, w), |(y, x)| ((x * 7 + y * 3 + x * y) % PALETTE.len()) as u8)
    }

    fn colour_image(ids: &Array2<u8>) -> RgbImage {
        let (h, w) = ids.dim();
        RgbImage::from_fn(w as u32, h as u32, |x, y| Rgb(PALETTE[ids[[y as usize, x as usize]] as usize].1))
    }

    // --- hand-made PNGs (palette, low bit depth, hostile headers) ---------------------------------

    #[allow(dead_code)]
    mod png {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/png.rs"));
    }
    use png::{pack_bits, raw_png};

    // --- segmentation -----------------------------------------------------------------------------

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
        assert_eq!(err.code(), "unknown_class_colour");
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
        assert_eq!(err.code(), "class_id_out_of_range");
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

    // --- sketch -----------------------------------------------------------------------------------

    /// A 3-pixel-wide cross and a diagonal on `bg`, strokes of value `ink`.
    fn strokes(w: u32, h: u32, bg: u8, ink: u8) -> GrayImage {
        GrayImage::from_fn(w, h, |x, y| {
            let on = (x as i64 - w as i64 / 2).abs() <= 1 || (y as i64 - h as i64 / 3).abs() <= 1 || x == y;
            Luma([if on { ink } else { bg }])
        })
    }

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

    // --- hostile input ----------------------------------------------------------------------------

    fn must_fail(bytes: &[u8], code: &str) {
        for m in [seg(), sketch()] {
            let err = decode_frame(bytes, &m, 32, &lim()).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
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
        assert_eq!(decode_frame(&bytes, &sketch(), 32, &small).unwrap_err().code(), "frame_too_large");
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
        assert_eq!(decode_frame(&bytes, &sketch(), 0, &lim()).unwrap_err().code(), "invalid_size");
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
        assert_eq!(err.code(), "corrupt_image", "{err}");

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
        // palette PNG whose colours are not classes is an unknown colour.
        let bytes = raw_png(2, 1, 8, 3, &[(b"PLTE", vec![1, 2, 3, 255, 0, 255])], &[vec![0, 1]]);
        assert_eq!(seg_map(&bytes, 2).unwrap_err().code(), "unknown_class_colour");
    }

    #[test]
    fn error_codes_are_snake_case_and_distinct_where_it_matters() {
        let errors = [
            FrameError::Empty,
            FrameError::TooLarge { bytes: 2, max_bytes: 1 },
            FrameError::TooManyPixels { width: 9, height: 9, max_pixels: 1 },
            FrameError::DimensionLimit { message: "m".into(), max_pixels: 1 },
            FrameError::MemoryLimit { message: "m".into(), max_alloc: 1 },
            FrameError::NotAnImage,
            FrameError::Unsupported { message: "Gif".into() },
            FrameError::Corrupt { message: "m".into() },
            FrameError::InvalidSize { size: 0 },
            FrameError::UnknownClassColour { color: [1, 2, 3], x: 0, y: 0, nearest: "sky".into(), distance: 99.0 },
            FrameError::ClassIdOutOfRange { id: 9, x: 0, y: 0, classes: 6 },
        ];
        for e in &errors {
            let code = e.code();
            assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert!(!e.to_string().is_empty());
        }
        assert!(errors[9].to_string().contains("#010203"));
        let limits = FrameLimits::default();
        assert_eq!((limits.max_bytes, limits.max_pixels), (8 * 1024 * 1024, 16 * 1024 * 1024));
        let il = limits.image_limits();
        assert_eq!((il.max_image_width, il.max_image_height), (Some(16 << 20), Some(16 << 20)));
        assert!(il.max_alloc.unwrap() >= 8 * limits.max_pixels);
    }
}
