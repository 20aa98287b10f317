//! Property-based fuzzing (proptest, stable toolchain) of the two parsers that take untrusted
//! input: the frame decoder ([`decode_frame`], bytes from MQTT) and the configuration parser
//! ([`EdgeConfig::parse`]).
//!
//! Properties:
//! 1. arbitrary byte strings (bare, or behind a PNG / JPEG signature) never panic, and decoding
//!    allocates within a bound set by the [`FrameLimits`], not by the input;
//! 2. valid PNG / JPEG encodings of random images (grey, grey + alpha, RGB, RGBA, 8 / 16 bits,
//!    1-4-bit grey, indexed, EXIF orientation), mutated (byte flips, truncation, insertion,
//!    deletion, interesting 32-bit values, chunk CRCs recomputed or not), the same;
//! 3. PNG / JPEG headers that claim more pixels than allowed (up to u32::MAX x u32::MAX, valid CRC)
//!    are refused with `too_many_pixels`, fast and before any large allocation;
//! 4. a segmentation map in palette colours (RGB, RGBA, 16-bit, indexed, grey ids, low bit depths,
//!    EXIF orientation, colour noise within tolerance) decodes to the right class ids at any size;
//! 5. the config parser never panics on arbitrary text, TOML-shaped text or mutations of
//!    `config/edge.toml`; its errors name the file; an accepted config round-trips.
//!
//! Every property counts the inputs it tried and prints one summary line to stderr
//! (`cargo test --release --test fuzz_frames -- --nocapture` shows them). The inputs are random
//! on each run; a failure is shrunk and its seed saved in `tests/proptest-regressions/`.
//! `FUZZ_FRAMES_SCALE=N` multiplies the number of cases (a long run: `FUZZ_FRAMES_SCALE=50`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, GrayImage, ImageEncoder};
use ndarray::Array2;
use proptest::prelude::*;
use proptest::sample::Index;
use rand::SeedableRng as _;
use rand_chacha::ChaCha8Rng;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use mcm_edge::config::{ConfigError, EdgeConfig};
use mcm_edge::contract::{ModalityInfo, ModalityKind, ModalityMap, ModelInfo};
use mcm_edge::frames::{FrameError, FrameLimits, decode_frame};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: a per-thread count of live bytes and its peak, so that one decode can be
// measured while the other tests run on other threads.

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn track(delta: i64) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counters touch only const-initialised
// thread-locals without destructors (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as i64);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as i64));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Run `f` and return its result with the peak of bytes it had allocated at once (this thread).
fn measure<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    (out, (peak - start).max(0) as u64)
}

// ---------------------------------------------------------------------------------------------
// Counters and the summary line.

#[derive(Default)]
struct Tally {
    inputs: AtomicU64,
    decodes: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    /// `corrupt_image` errors that are a decoder panic caught inside `decode_frame`.
    caught: AtomicU64,
    peak_alloc: AtomicU64,
    slowest_us: AtomicU64,
    /// Results by error code (`ok` for a decoded map).
    codes: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn count(&self, code: &'static str) {
        *self.codes.lock().unwrap_or_else(|e| e.into_inner()).entry(code).or_default() += 1;
    }

    fn report(&self, name: &str, start: Instant) {
        eprintln!(
            "fuzz_frames: {name}: {} inputs, {} decodes ({} ok, {} errors), {} panics ({} decoder panics caught inside), \
             peak allocation {:.1} MiB, slowest {:.1} ms, {:.1} s; results {:?}",
            self.inputs.load(Ordering::Relaxed),
            self.decodes.load(Ordering::Relaxed),
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            self.panics.load(Ordering::Relaxed),
            self.caught.load(Ordering::Relaxed),
            self.peak_alloc.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
            self.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
            start.elapsed().as_secs_f64(),
            self.codes.lock().unwrap_or_else(|e| e.into_inner()),
        );
    }
}

/// A runner of `cases` cases: an eighth of them in a debug build (about as long as the release
/// run), times `FUZZ_FRAMES_SCALE` when set (e.g. `FUZZ_FRAMES_SCALE=50` for a long run).
/// Failures are saved to `tests/proptest-regressions/fuzz_frames.txt` and replayed first.
fn runner(cases: u32) -> TestRunner {
    let scale: f64 = std::env::var("FUZZ_FRAMES_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let debug = if cfg!(debug_assertions) { 0.125 } else { 1.0 };
    let cases = ((f64::from(cases) * scale * debug).round() as u32).max(1);
    TestRunner::new(Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/fuzz_frames.txt",
        ))),
        ..Config::default()
    })
}

/// Run a property with `cases` cases, print the summary, fail on a counterexample or any panic.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    tally: &Tally,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let start = Instant::now();
    let result = runner(cases).run(&strategy, |value| {
        tally.inputs.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    tally.report(name, start);
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    assert_eq!(tally.panics.load(Ordering::Relaxed), 0, "{name}: panics");
}

// ---------------------------------------------------------------------------------------------
// Modalities and limits.

fn model(name: &str) -> ModelInfo {
    ModelInfo::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)).expect("model.toml")
}

/// The segmentation and the sketch modality of `models/tiny` (8 classes, the shipped palette).
fn modalities() -> Vec<ModalityInfo> {
    let info = model("tiny");
    let seg = info.modalities.iter().find(|m| m.kind == ModalityKind::Segmentation).expect("segmentation").clone();
    let sketch = info.modalities.iter().find(|m| m.kind == ModalityKind::Sketch).expect("sketch").clone();
    vec![seg, sketch]
}

/// The default limits, or small ones (so that size refusals and memory bounds are exercised).
fn limits() -> impl Strategy<Value = FrameLimits> {
    prop_oneof![
        2 => Just(FrameLimits::DEFAULT),
        1 => (64usize..=1 << 20, 1u64..=1 << 20).prop_map(|(b, p)| FrameLimits::new(b, p)),
    ]
}

/// What one decode may allocate at most: the decoded image twice (an EXIF rotation copies it),
/// the stroke / id maps and the fixed-size tables; [`FrameLimits::max_alloc`] is 8 bytes per pixel
/// plus 4 MiB headroom, so three times it covers all of this.
fn alloc_bound(limits: &FrameLimits) -> u64 {
    limits.max_alloc().saturating_mul(3)
}

/// One checked decode: its result, the bytes it allocated at once and its time.
struct Decode {
    result: Result<ModalityMap, FrameError>,
    peak: u64,
    elapsed: Duration,
}

/// Decode `bytes` as `modality` and check the contract: no panic, `Ok` with a map of the asked
/// size and valid values, or an error with a snake_case code and a message; allocation within
/// [`alloc_bound`].
fn decode_checked(
    tally: &Tally,
    bytes: &[u8],
    modality: &ModalityInfo,
    size: usize,
    limits: &FrameLimits,
) -> Result<Decode, TestCaseError> {
    tally.decodes.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let (result, peak) = measure(|| catch_unwind(AssertUnwindSafe(|| decode_frame(bytes, modality, size, limits))));
    let elapsed = start.elapsed();
    tally.slowest_us.fetch_max(elapsed.as_micros() as u64, Ordering::Relaxed);
    tally.peak_alloc.fetch_max(peak, Ordering::Relaxed);
    let Ok(result) = result else {
        tally.panics.fetch_add(1, Ordering::Relaxed);
        return Err(TestCaseError::fail(format!("decode_frame panicked on {} bytes ({})", bytes.len(), modality.name)));
    };
    prop_assert!(
        peak <= alloc_bound(limits),
        "{} bytes allocated at once, bound {} ({limits:?}, {} input bytes, header dimensions {:?}, {:?})",
        peak,
        alloc_bound(limits),
        bytes.len(),
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok().and_then(|r| r.into_dimensions().ok()),
        result.as_ref().map(|_| "decoded").map_err(|e| e.code())
    );
    match &result {
        Ok(map) => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            tally.count("ok");
            match (map, modality.kind) {
                (ModalityMap::Segmentation(ids), ModalityKind::Segmentation) => {
                    prop_assert_eq!(ids.dim(), (size, size));
                    prop_assert!(ids.iter().all(|&id| (id as usize) < modality.channels));
                }
                (ModalityMap::Sketch(s), ModalityKind::Sketch) => {
                    prop_assert_eq!(s.dim(), (size, size));
                    prop_assert!(s.iter().all(|v| (0.0..=1.0).contains(v)), "sketch values outside [0, 1]");
                }
                _ => prop_assert!(false, "map kind differs from the modality kind"),
            }
        }
        Err(e) => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            let code = e.code().as_str();
            tally.count(code);
            prop_assert!(
                !code.is_empty() && code.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'),
                "code {code:?}"
            );
            prop_assert!(!e.to_string().is_empty());
            if e.to_string().contains("failed unexpectedly") {
                tally.caught.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Decode { result, peak, elapsed })
}

// ---------------------------------------------------------------------------------------------
// Encoders.

#[path = "../src/frames/test_png.rs"]
#[allow(dead_code)]
mod png;
use png::{crc32, pack_bits, png_chunks, raw_png, zlib_stored};

/// Legal (bit depth, colour type) pairs of PNG.
const PNG_FORMATS: [(u8, u8); 13] =
    [(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (8, 3), (8, 4), (16, 4), (8, 6), (16, 6)];

/// Recompute the CRC of every complete chunk of a (mutated) PNG, so that mutations reach the
/// decoder's chunk parsers instead of stopping at the CRC check.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let Some(end) = at.checked_add(8).and_then(|d| d.checked_add(len)) else { break };
        if end + 4 > bytes.len() {
            break;
        }
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

fn encode_png(raw: &[u8], w: u32, h: u32, colour: ExtendedColorType, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = PngEncoder::new(&mut out);
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif).expect("PNG EXIF");
    }
    enc.write_image(raw, w, h, colour).expect("PNG encoding");
    out
}

fn encode_jpeg(raw: &[u8], w: u32, h: u32, colour: ExtendedColorType, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality).write_image(raw, w, h, colour).expect("JPEG encoding");
    out
}

/// EXIF (big-endian TIFF) with one entry: Orientation = `o` (1-8).
fn exif_orientation(o: u8) -> Vec<u8> {
    vec![b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, o, 0, 0, 0, 0, 0, 0]
}


// ---------------------------------------------------------------------------------------------
// Property 1: arbitrary bytes.

#[test]
fn arbitrary_bytes_never_panic() {
    let tally = Tally::default();
    let mods = modalities();
    // Real headers, so that the random rest reaches the chunk / segment parsers: the first bytes
    // of a PNG up to its IHDR (valid CRC, random size and format) and of a JPEG up to a marker.
    let formats = PNG_FORMATS.to_vec();
    let png_header = (1u32..=64, 1u32..=64, prop::sample::select(formats), 0u8..=1).prop_map(
        |(w, h, (depth, colour), interlace)| {
            let png = png_chunks(w, h, depth, colour, interlace, &[], &[]);
            png[..33].to_vec()
        },
    );
    let jpeg = encode_jpeg(&[90u8; 16 * 16 * 3], 16, 16, ExtendedColorType::Rgb8, 75);
    let markers: Vec<usize> = (2..jpeg.len() - 1).filter(|&i| jpeg[i] == 0xFF && jpeg[i + 1] != 0).collect();
    let jpeg_header = prop::sample::select(markers).prop_map(move |end| jpeg[..end].to_vec());
    let prefix = prop_oneof![
        3 => Just(Vec::new()),
        1 => Just(b"\x89PNG\r\n\x1a\n".to_vec()),
        1 => Just(vec![0xFF, 0xD8, 0xFF]),
        2 => png_header,
        2 => jpeg_header,
    ];
    let strategy = (prefix, proptest::collection::vec(any::<u8>(), 0..4096), limits(), 1usize..=64);
    check(
        "arbitrary bytes 0..4096 (bare / after PNG / JPEG headers)",
        20000,
        strategy,
        &tally,
        |(prefix, body, limits, size)| {
            let mut bytes = prefix;
            bytes.extend_from_slice(&body);
            for m in &mods {
                decode_checked(&tally, &bytes, m, size, &limits)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Property 2: valid encodings, mutated.

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Png(ExtendedColorType),
    /// Grey PNG of 1, 2 or 4 bits per pixel.
    PngLowBit(u8),
    /// Indexed PNG of 1, 2, 4 or 8 bits per pixel (palette of the model's classes).
    PngIndexed(u8),
    Jpeg(ExtendedColorType, u8),
}

fn encoding() -> impl Strategy<Value = Encoding> {
    use ExtendedColorType::*;
    prop_oneof![
        prop::sample::select(vec![L8, La8, Rgb8, Rgba8, L16, La16, Rgb16, Rgba16]).prop_map(Encoding::Png),
        prop::sample::select(vec![1u8, 2, 4]).prop_map(Encoding::PngLowBit),
        prop::sample::select(vec![1u8, 2, 4, 8]).prop_map(Encoding::PngIndexed),
        (prop::sample::select(vec![L8, Rgb8]), 30u8..=100).prop_map(|(c, q)| Encoding::Jpeg(c, q)),
    ]
}

/// A random image in `encoding`: blocks of palette colours, noise or strokes.
fn make_image(enc: Encoding, w: u32, h: u32, seed: u64, orientation: u8) -> Vec<u8> {
    const PALETTE: [[u8; 3]; 8] = [
        [135, 206, 235],
        [255, 255, 255],
        [128, 64, 128],
        [0, 64, 255],
        [0, 200, 0],
        [0, 96, 32],
        [240, 200, 80],
        [96, 96, 96],
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mode = rng.next_u64() % 3;
    let block = 1 + (rng.next_u64() % 32) as u32;
    let table: Vec<u64> = (0..64).map(|_| rng.next_u64()).collect();
    // A value per pixel: palette index of a block, noise, or a stroke mask.
    let px = |x: u32, y: u32, rng: &mut ChaCha8Rng| -> u64 {
        match mode {
            0 => table[((x / block + 7 * (y / block)) % 64) as usize],
            1 => rng.next_u64(),
            _ => u64::from(x == y || x.abs_diff(w / 2) <= 1 || y == h / 3) * u64::MAX,
        }
    };
    let mut values = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            values.push(px(x, y, &mut rng));
        }
    }
    let exif = (orientation > 1).then(|| exif_orientation(orientation));
    match enc {
        Encoding::Png(colour) | Encoding::Jpeg(colour, _) => {
            let channels = colour.channel_count() as usize;
            let wide = colour.bits_per_pixel() as usize / channels == 16;
            let mut raw = Vec::new();
            for &v in &values {
                let rgb =
                    if mode == 0 { PALETTE[(v % 8) as usize] } else { [v as u8, (v >> 8) as u8, (v >> 16) as u8] };
                let grey = if mode == 2 { v as u8 } else { rgb[0] };
                let alpha = (v >> 24) as u8;
                let samples: Vec<u8> = match channels {
                    1 => vec![grey],
                    2 => vec![grey, alpha],
                    3 => rgb.to_vec(),
                    _ => vec![rgb[0], rgb[1], rgb[2], alpha],
                };
                for s in samples {
                    if wide {
                        raw.extend_from_slice(&((u16::from(s) * 257) ^ ((v >> 40) as u16 & 0xF)).to_ne_bytes());
                    } else {
                        raw.push(s);
                    }
                }
            }
            match enc {
                Encoding::Jpeg(_, quality) => encode_jpeg(&raw, w, h, colour, quality),
                _ => encode_png(&raw, w, h, colour, exif),
            }
        }
        Encoding::PngLowBit(depth) | Encoding::PngIndexed(depth) => {
            let levels = 1u64 << depth;
            let indexed = matches!(enc, Encoding::PngIndexed(_));
            let entries = if indexed { levels.min(8) } else { levels };
            let rows: Vec<Vec<u8>> = values
                .chunks(w as usize)
                .map(|row| pack_bits(&row.iter().map(|&v| (v % entries) as u8).collect::<Vec<_>>(), depth))
                .collect();
            let mut extra: Vec<(&[u8; 4], Vec<u8>)> = Vec::new();
            if indexed {
                extra.push((b"PLTE", PALETTE[..entries as usize].iter().flatten().copied().collect()));
            }
            if let Some(exif) = exif {
                extra.push((b"eXIf", exif));
            }
            raw_png(w, h, depth, if indexed { 3 } else { 0 }, &extra, &rows)
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// A big-endian 32-bit value that decoders treat specially (lengths, sizes).
    Interesting(Index, u32),
    /// Copy a run of bytes elsewhere (duplicated chunks, markers).
    Splice(Index, Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..32)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<Index>(), prop::sample::select(vec![0u32, 1, 0xFF, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000, u32::MAX]))
            .prop_map(|(i, v)| Mutation::Interesting(i, v)),
        1 => (any::<Index>(), any::<Index>(), 1usize..64).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Flip(i, x) => bytes[i.index(n)] ^= x,
        Mutation::Set(i, v) => bytes[i.index(n)] = *v,
        Mutation::Truncate(i) => bytes.truncate(i.index(n)),
        Mutation::Insert(i, b) => {
            let at = i.index(n + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete(i, k) => {
            let at = i.index(n);
            bytes.drain(at..(at + k).min(n));
        }
        Mutation::Interesting(i, v) => {
            let at = i.index(n);
            let end = (at + 4).min(n);
            bytes[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
        }
        Mutation::Splice(from, to, k) => {
            let from = from.index(n);
            let run: Vec<u8> = bytes[from..(from + k).min(n)].to_vec();
            let at = to.index(n + 1);
            bytes.splice(at..at, run);
        }
    }
}

#[test]
fn mutated_png_and_jpeg_never_panic() {
    let tally = Tally::default();
    let mods = modalities();
    let strategy = (
        encoding(),
        1u32..=300,
        1u32..=300,
        any::<u64>(),
        prop_oneof![3 => Just(1u8), 1 => 2u8..=8],
        proptest::collection::vec(mutation(), 0..8),
        any::<bool>(),
        limits(),
        1usize..=64,
    );
    check(
        "valid PNG/JPEG 1..300 px, mutated",
        6000,
        strategy,
        &tally,
        |(enc, w, h, seed, orientation, mutations, fix_crc, limits, size)| {
            let mut bytes = make_image(enc, w, h, seed, orientation);
            // The unmutated image decodes (as a sketch: any content is a sketch) within the limits.
            if mutations.is_empty()
                && u64::from(w) * u64::from(h) <= limits.max_pixels
                && bytes.len() <= limits.max_bytes
            {
                let r = decode_checked(&tally, &bytes, &mods[1], size, &limits)?.result;
                prop_assert!(r.is_ok(), "{enc:?} {w}x{h}: {:?}", r.err());
            }
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            if fix_crc && bytes.starts_with(b"\x89PNG") {
                fix_png_crcs(&mut bytes);
            }
            for m in &mods {
                decode_checked(&tally, &bytes, m, size, &limits)?;
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Property 3: decompression bombs.

/// Width and height whose product exceeds `max_pixels`, each up to `limit`, edge values favoured.
fn huge_dims(max_pixels: u64, limit: u32) -> impl Strategy<Value = (u32, u32)> {
    let side = prop_oneof![
        3 => 1u32..=limit,
        1 => prop::sample::select(vec![1u32, 2, 4096, 4097, 65_535, 65_536, 1 << 24, (1 << 31) - 1, 1 << 31, u32::MAX])
            .prop_map(move |v| v.min(limit)),
    ];
    (side, any::<bool>(), any::<Index>())
        .prop_filter("the other side can exceed the limit", move |&(a, _, _)| {
            u64::from(a) * u64::from(limit) > max_pixels
        })
        .prop_map(move |(a, swap, pick)| {
            // The other side: from the smallest that exceeds the limit up to `limit`.
            let min_other = (max_pixels / u64::from(a) + 1) as u32;
            let b = min_other + pick.index((limit - min_other) as usize + 1) as u32;
            if swap { (b, a) } else { (a, b) }
        })
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    let tally = Tally::default();
    let mods = modalities();
    let limits = FrameLimits::DEFAULT;
    let formats = PNG_FORMATS.to_vec();
    let png = (
        huge_dims(limits.max_pixels, u32::MAX).prop_filter("PNG sides are >= 1", |&(w, h)| w > 0 && h > 0),
        prop::sample::select(formats),
        0u8..=1,
        proptest::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
    )
        .prop_map(|((w, h), (depth, colour), interlace, data, stored)| {
            let idat = if stored { zlib_stored(&data) } else { data };
            let extra: Vec<(&[u8; 4], Vec<u8>)> =
                if colour == 3 { vec![(b"PLTE", vec![0, 0, 0, 255, 255, 255])] } else { Vec::new() };
            ((w, h), png_chunks(w, h, depth, colour, interlace, &extra, &idat))
        });
    let jpeg_base = encode_jpeg(&[128u8; 8 * 8 * 3], 8, 8, ExtendedColorType::Rgb8, 80);
    let sof = jpeg_base.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0");
    let jpeg = huge_dims(limits.max_pixels, u32::from(u16::MAX)).prop_map(move |(w, h)| {
        let mut bytes = jpeg_base.clone();
        bytes[sof + 5..sof + 7].copy_from_slice(&(h as u16).to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&(w as u16).to_be_bytes());
        ((w, h), bytes)
    });
    check(
        "PNG/JPEG headers claiming > 16 Mpx (up to u32::MAX x u32::MAX)",
        10000,
        prop_oneof![3 => png, 1 => jpeg],
        &tally,
        |((w, h), bytes)| {
            for m in &mods {
                let Decode { result, peak, elapsed } = decode_checked(&tally, &bytes, m, 16, &limits)?;
                let err = match result {
                    Ok(_) => return Err(TestCaseError::fail(format!("{w}x{h} decoded"))),
                    Err(e) => e,
                };
                prop_assert_eq!(err.code().as_str(), "too_many_pixels", "{}x{}: {}", w, h, err);
                // Refused on the header: no buffer for the pixels, no time spent on them.
                prop_assert!(peak < 1 << 20, "{w}x{h}: {peak} bytes allocated before refusing");
                prop_assert!(elapsed < Duration::from_millis(250), "{w}x{h}: refused after {elapsed:?}");
            }
            Ok(())
        },
    );
}

/// The largest header the limits allow (exactly `max_pixels`, 16-bit RGBA) with no pixel data: not
/// a pixel-limit refusal, a clean error, within the allocation bound. Prints what it allocated:
/// the worst case of a few dozen hostile bytes.
#[test]
fn largest_allowed_header_without_data_stays_within_the_bound() {
    let tally = Tally::default();
    let limits = FrameLimits::DEFAULT;
    let side = (limits.max_pixels as f64).sqrt() as u32;
    for (depth, colour) in [(16u8, 6u8), (8, 0)] {
        let bytes = png_chunks(side, side, depth, colour, 0, &[], &zlib_stored(&[0; 64]));
        for m in &modalities() {
            let d = decode_checked(&tally, &bytes, m, 16, &limits).expect("contract");
            let code = d.result.as_ref().err().map(|e| e.code().as_str());
            assert_eq!(code, Some("corrupt_image"), "{side}x{side}, {depth}-bit colour type {colour}");
            eprintln!(
                "fuzz_frames: {} bytes claiming {side}x{side} {depth}-bit colour type {colour} ({}): {code:?} after {:.1} ms, \
                 {:.1} MiB allocated at once (bound {:.0} MiB)",
                bytes.len(),
                m.name,
                d.elapsed.as_secs_f64() * 1000.0,
                d.peak as f64 / (1 << 20) as f64,
                alloc_bound(&limits) as f64 / (1 << 20) as f64
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 4: segmentation round trip.

#[derive(Debug, Clone, Copy)]
enum SegEncoding {
    Rgb8,
    Rgba8,
    Rgb16,
    /// RGB with every channel moved by up to +-10 (distance <= 17.4, within the tolerance of 40
    /// and under half the smallest distance between two palette colours, 55.4).
    Rgb8Noisy,
    /// Indexed PNG of this bit depth, palette entries in a shuffled order.
    Indexed(u8),
    /// Single-channel ids: 8-bit grey, grey + alpha, 16-bit grey, 4-bit grey.
    Grey8,
    GreyA8,
    Grey16,
    Grey4,
}

fn seg_encoding() -> impl Strategy<Value = SegEncoding> {
    use SegEncoding::*;
    prop::sample::select(vec![Rgb8, Rgba8, Rgb16, Rgb8Noisy, Indexed(4), Indexed(8), Grey8, GreyA8, Grey16, Grey4])
}

/// Nearest-neighbour reference: pixel-centre sampling, as documented by `decode_frame`.
fn nearest(ids: &Array2<u8>, size: usize) -> Array2<u8> {
    let (h, w) = ids.dim();
    let src = |i: usize, n: usize| ((2 * i + 1) * n / (2 * size)).min(n - 1);
    Array2::from_shape_fn((size, size), |(y, x)| ids[[src(y, h), src(x, w)]])
}

/// `ids` as the decoder should see them after EXIF orientation `o`.
fn oriented(ids: &Array2<u8>, o: u8) -> Array2<u8> {
    let (h, w) = ids.dim();
    let mut img = DynamicImage::ImageLuma8(GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([ids[[y as usize, x as usize]]])
    }));
    img.apply_orientation(Orientation::from_exif(o).expect("orientation 1-8"));
    let g = img.to_luma8();
    Array2::from_shape_fn((g.height() as usize, g.width() as usize), |(y, x)| g.get_pixel(x as u32, y as u32)[0])
}

#[test]
fn segmentation_round_trip() {
    let tally = Tally::default();
    let tiny = model("tiny");
    let default = model("default");
    let segs: Vec<ModalityInfo> = [tiny, default]
        .iter()
        .map(|m| m.modalities.iter().find(|m| m.kind == ModalityKind::Segmentation).expect("segmentation").clone())
        .collect();
    let strategy = (1usize..=48, 1usize..=48, 0usize..2, any::<u64>())
        .prop_flat_map(move |(w, h, model, seed)| {
            (
                Just((w, h, model, seed)),
                proptest::collection::vec(0u8..8, w * h),
                seg_encoding(),
                prop_oneof![3 => Just(1u8), 1 => 1u8..=8],
                prop_oneof![1 => Just(0usize), 3 => 1usize..=80],
            )
        })
        .prop_map(|((w, h, model, seed), ids, enc, orientation, size)| {
            ((w, h, model, seed), Array2::from_shape_vec((h, w), ids).expect("shape"), enc, orientation, size)
        });
    check(
        "segmentation palette round trip (9 encodings, EXIF, resize)",
        6000,
        strategy,
        &tally,
        |((w, h, model, seed), ids, enc, orientation, size)| {
            let m = &segs[model];
            let classes = m.classes.len();
            prop_assume!(ids.iter().all(|&id| (id as usize) < classes));
            let colour = |id: u8| m.classes[id as usize].color;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (w32, h32) = (w as u32, h as u32);
            let exif = (orientation > 1).then(|| exif_orientation(orientation));
            let pixels = || ids.iter().copied();
            let bytes = match enc {
                SegEncoding::Rgb8 => {
                    encode_png(&pixels().flat_map(colour).collect::<Vec<_>>(), w32, h32, ExtendedColorType::Rgb8, exif)
                }
                SegEncoding::Rgba8 => {
                    let raw: Vec<u8> = pixels()
                        .flat_map(|id| {
                            let c = colour(id);
                            [c[0], c[1], c[2], rng.next_u64() as u8]
                        })
                        .collect();
                    encode_png(&raw, w32, h32, ExtendedColorType::Rgba8, exif)
                }
                SegEncoding::Rgb16 => {
                    let raw: Vec<u8> =
                        pixels().flat_map(colour).flat_map(|c| (u16::from(c) * 257).to_ne_bytes()).collect();
                    encode_png(&raw, w32, h32, ExtendedColorType::Rgb16, exif)
                }
                SegEncoding::Rgb8Noisy => {
                    let raw: Vec<u8> = pixels()
                        .flat_map(colour)
                        .map(|c| (i32::from(c) + (rng.next_u64() % 21) as i32 - 10).clamp(0, 255) as u8)
                        .collect();
                    encode_png(&raw, w32, h32, ExtendedColorType::Rgb8, exif)
                }
                SegEncoding::Indexed(depth) => {
                    // Palette order: a rotation of the class order.
                    let shift = (rng.next_u64() % classes as u64) as usize;
                    let order: Vec<usize> = (0..classes).map(|i| (i + shift) % classes).collect();
                    let plte: Vec<u8> = order.iter().flat_map(|&c| m.classes[c].color).collect();
                    let index_of =
                        |id: u8| order.iter().position(|&c| c == id as usize).expect("class in palette") as u8;
                    let rows: Vec<Vec<u8>> = ids
                        .rows()
                        .into_iter()
                        .map(|r| pack_bits(&r.iter().map(|&id| index_of(id)).collect::<Vec<_>>(), depth))
                        .collect();
                    let mut extra: Vec<(&[u8; 4], Vec<u8>)> = vec![(b"PLTE", plte)];
                    if let Some(exif) = exif {
                        extra.push((b"eXIf", exif));
                    }
                    raw_png(w32, h32, depth, 3, &extra, &rows)
                }
                SegEncoding::Grey8 => encode_png(&pixels().collect::<Vec<_>>(), w32, h32, ExtendedColorType::L8, exif),
                SegEncoding::GreyA8 => {
                    let raw: Vec<u8> = pixels().flat_map(|id| [id, rng.next_u64() as u8]).collect();
                    encode_png(&raw, w32, h32, ExtendedColorType::La8, exif)
                }
                SegEncoding::Grey16 => {
                    let raw: Vec<u8> = pixels().flat_map(|id| u16::from(id).to_ne_bytes()).collect();
                    encode_png(&raw, w32, h32, ExtendedColorType::L16, exif)
                }
                SegEncoding::Grey4 => {
                    let rows: Vec<Vec<u8>> = ids.rows().into_iter().map(|r| pack_bits(&r.to_vec(), 4)).collect();
                    let extra: Vec<(&[u8; 4], Vec<u8>)> = exif.map(|e| (b"eXIf", e)).into_iter().collect();
                    raw_png(w32, h32, 4, 0, &extra, &rows)
                }
            };
            let expected_native = oriented(&ids, orientation);
            // Size 0 stands for the image's own size when square (no resize at all).
            let size = if size == 0 { if w == h { w } else { 16 } } else { size };
            match decode_checked(&tally, &bytes, m, size, &FrameLimits::DEFAULT)?.result {
                Ok(ModalityMap::Segmentation(out)) => {
                    let expected = nearest(&expected_native, size);
                    prop_assert!(
                        out == expected,
                        "{enc:?} {w}x{h} orientation {orientation} -> {size}: ids differ\n{out:?}\nexpected\n{expected:?}"
                    );
                }
                Ok(_) => prop_assert!(false, "not a segmentation"),
                Err(e) => prop_assert!(false, "{enc:?} {w}x{h} orientation {orientation}: {e}"),
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Property 5: the config parser.

/// Parse `text`: never a panic; an error names `path`; an accepted config is valid, its derived
/// values do not panic and it survives a TOML round trip.
fn parse_checked(tally: &Tally, text: &str, path: &Path) -> Result<(), TestCaseError> {
    tally.decodes.fetch_add(1, Ordering::Relaxed);
    let Ok(result) = catch_unwind(AssertUnwindSafe(|| EdgeConfig::parse(text, path))) else {
        tally.panics.fetch_add(1, Ordering::Relaxed);
        return Err(TestCaseError::fail(format!("EdgeConfig::parse panicked on {text:?}")));
    };
    match result {
        Ok(config) => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            tally.count("ok");
            prop_assert!(config.validate(path).is_ok());
            prop_assert!(config.mqtt.broker_address().is_ok());
            let _ = (config.mqtt.topic_prefix(), config.mqtt.client_id(), config.mqtt.keep_alive());
            let again = toml::to_string(&config).map_err(|e| TestCaseError::fail(format!("serialize: {e}")))?;
            let back = EdgeConfig::parse(&again, path);
            prop_assert!(back.as_ref().is_ok_and(|b| *b == config), "round trip of {text:?} via {again:?}: {back:?}");
        }
        Err(e) => {
            tally.errors.fetch_add(1, Ordering::Relaxed);
            tally.count(match e {
                ConfigError::Io { .. } => "io",
                ConfigError::Parse { .. } => "parse",
                ConfigError::Invalid { key, .. } => key,
            });
            let msg = e.to_string();
            prop_assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
        }
    }
    Ok(())
}

/// Structurally valid TOML over the real sections and keys (and some unknown ones) with values
/// of every type, so that the checks after parsing are reached.
fn toml_shaped() -> impl Strategy<Value = String> {
    let keys = vec![
        ("mqtt", "host"),
        ("mqtt", "port"),
        ("mqtt", "url"),
        ("mqtt", "device_id"),
        ("mqtt", "client_id"),
        ("mqtt", "topic_prefix"),
        ("mqtt", "request_filter"),
        ("mqtt", "protocol"),
        ("mqtt", "keep_alive_s"),
        ("mqtt", "max_packet_bytes"),
        ("mqtt", "qos"),
        ("mqtt", "clean_session"),
        ("mqtt", "session_expiry_s"),
        ("mqtt", "reconnect_delay_ms"),
        ("mqtt", "username"),
        ("mqtt", "password"),
        ("model", "dir"),
        ("generation", "steps"),
        ("generation", "eta"),
        ("generation", "strength"),
        ("generation", "seed_policy"),
        ("generation", "fixed_seed"),
        ("limits", "max_payload_bytes"),
        ("limits", "max_pixels"),
        ("limits", "max_steps"),
        ("limits", "queue_depth"),
        ("limits", "recent_ids"),
        ("limits", "max_strength"),
        ("mqtt", "bogus"),
        ("extra", "key"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0i64..100_000).prop_map(|v| v.to_string()),
        prop::sample::select(vec!["0", "1", "3", "4", "5", "-1", "65535", "65536", "18446744073709551615", "1e400"])
            .prop_map(str::to_string),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        prop::sample::select(vec!["nan", "inf", "-inf", "0.0", "1.5", "-0.0", "10.000001"]).prop_map(str::to_string),
        any::<bool>().prop_map(|v| v.to_string()),
        "[a-zA-Z0-9_/+#:.$ -]{0,24}".prop_map(|s| format!("{s:?}")),
        prop::sample::select(vec![
            "\"mqtt://h:1\"",
            "\"tcp://[::1]:1883\"",
            "\"mqtt://:0\"",
            "\"http://x\"",
            "\"fixed\"",
            "\"random\"",
            "\"counter\"",
            "\"$share/g/mcm/+/request\"",
            "\"#\"",
            "\"a/#/b\"",
            "\"\"",
            "[1, 2]",
            "{ a = 1 }",
        ])
        .prop_map(str::to_string),
    ];
    proptest::collection::vec((prop::sample::select(keys), value), 0..12).prop_map(|entries| {
        let mut text = String::new();
        let mut sections: Vec<&str> = entries.iter().map(|((s, _), _)| *s).collect();
        sections.dedup();
        for section in sections {
            text.push_str(&format!("[{section}]\n"));
            for ((s, k), v) in &entries {
                if *s == section {
                    text.push_str(&format!("{k} = {v}\n"));
                }
            }
        }
        text
    })
}

#[derive(Debug, Clone)]
enum TextMutation {
    DeleteLine(Index),
    DuplicateLine(Index, Index),
    SwapLines(Index, Index),
    /// Uncomment a commented line (`# key = value`).
    Uncomment(Index),
    /// Replace the value of a `key = value` line.
    Value(Index, String),
    InsertLine(Index, String),
    /// Byte-level flip, kept only when the text stays UTF-8 (else replaced lossily).
    Flip(Index, u8),
}

fn text_mutation() -> impl Strategy<Value = TextMutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(TextMutation::DeleteLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextMutation::DuplicateLine(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| TextMutation::SwapLines(a, b)),
        2 => any::<Index>().prop_map(TextMutation::Uncomment),
        3 => (any::<Index>(), prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f32>().prop_map(|v| format!("{v:?}")),
            "\"[ -~]{0,12}\"",
            Just("\"\"".to_string()),
            Just("true".to_string()),
            Just("[".to_string()),
        ]).prop_map(|(i, v)| TextMutation::Value(i, v)),
        1 => (any::<Index>(), "[ -~]{0,40}").prop_map(|(i, s)| TextMutation::InsertLine(i, s)),
        2 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| TextMutation::Flip(i, x)),
    ]
}

fn mutate_text(text: &str, m: &TextMutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match m {
        TextMutation::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        TextMutation::DuplicateLine(a, b) => {
            let line = lines[a.index(n)].clone();
            lines.insert(b.index(n + 1), line);
        }
        TextMutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        TextMutation::Uncomment(i) => {
            // The i-th commented `key = value` line, if any.
            let commented: Vec<usize> =
                (0..n).filter(|&k| lines[k].starts_with("# ") && lines[k].contains(" = ")).collect();
            if !commented.is_empty() {
                let k = commented[i.index(commented.len())];
                lines[k] = lines[k][2..].to_string();
            }
        }
        TextMutation::Value(i, v) => {
            let assignments: Vec<usize> =
                (0..n).filter(|&k| !lines[k].starts_with('#') && lines[k].contains(" = ")).collect();
            if !assignments.is_empty() {
                let k = assignments[i.index(assignments.len())];
                let key = lines[k].split(" = ").next().unwrap_or("").to_string();
                lines[k] = format!("{key} = {v}");
            }
        }
        TextMutation::InsertLine(i, s) => lines.insert(i.index(n + 1), s.clone()),
        TextMutation::Flip(i, x) => {
            let mut bytes = lines.join("\n").into_bytes();
            if !bytes.is_empty() {
                let k = i.index(bytes.len());
                bytes[k] ^= x;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    lines.join("\n")
}

#[test]
fn config_parser_never_panics() {
    let tally = Tally::default();
    let edge = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/edge.toml"))
        .expect("config/edge.toml");
    let path = Path::new("/etc/mcm edge/fuzz-edge.toml");
    parse_checked(&tally, &edge, path).expect("config/edge.toml parses");
    let mutated = proptest::collection::vec(text_mutation(), 1..6)
        .prop_map(move |ms| ms.iter().fold(edge.clone(), |t, m| mutate_text(&t, m)));
    let strategy = prop_oneof![
        2 => any::<String>(),
        1 => proptest::string::string_regex("(?s).{0,2000}").expect("regex"),
        1 => "[\\[\\]a-z_=\" 0-9.\n#,{}-]{0,300}",
        3 => toml_shaped(),
        4 => mutated,
    ];
    check("config parser (arbitrary, TOML-shaped, mutated edge.toml)", 20000, strategy, &tally, |text| {
        parse_checked(&tally, &text, path)
    });
}
