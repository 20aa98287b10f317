//! The status panel on a screen: pixel formats of Linux framebuffers (`/dev/fbN`), the
//! `[display]` section of `edge.toml` ([`DisplayConfig`]) and [`StatusDisplay`], which draws
//! [`crate::display::draw_panel`] and sends it to the framebuffer or, without one, to a PNG preview.
//!
//! The framebuffer is written as a plain file (seek to 0, write one whole frame), without ioctls,
//! so `width`, `height`, `pixel_format` and `stride_bytes` must match the device: see `fbset -i`
//! or `/sys/class/graphics/fb0/{virtual_size,bits_per_pixel,stride}`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};

use crate::display::{PanelState, draw_panel};

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

/// `[display]` section of `edge.toml`: the status panel. Every key is optional.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DisplayConfig {
    /// Draw the status panel at all (default `false`).
    pub enabled: bool,
    /// Framebuffer device to write, e.g. `/dev/fb0`; it must exist and be writable. Without it
    /// the panel goes to `preview_png`.
    pub framebuffer: Option<PathBuf>,
    /// Panel width in pixels, 16..=4096 (default 320); the framebuffer's visible width.
    pub width: u32,
    /// Panel height in pixels, 16..=4096 (default 240); the framebuffer's visible height.
    pub height: u32,
    /// Framebuffer pixel format: `rgb565` (default), `bgr565`, `xrgb8888`, `xbgr8888`, `rgb888`.
    pub pixel_format: PixelFormat,
    /// Framebuffer line length in bytes when rows are padded (fbdev `line_length`, sysfs
    /// `stride`); at least `width * bytes per pixel`; default unpadded.
    pub stride_bytes: Option<usize>,
    /// PNG file written instead when there is no `framebuffer` (default `out/status.png`;
    /// replaced atomically, its directory is created).
    pub preview_png: Option<PathBuf>,
    /// Minimum interval between two redraws, in milliseconds (default 500).
    pub refresh_ms: u64,
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            enabled: false,
            framebuffer: None,
            width: 320,
            height: 240,
            pixel_format: PixelFormat::Rgb565,
            stride_bytes: None,
            preview_png: Some(PathBuf::from("out/status.png")),
            refresh_ms: 500,
        }
    }
}

impl DisplayConfig {
    /// Where frames go, for people: `off`, `/dev/fb0 (320x240 Rgb565)` or
    /// `preview out/status.png (320x240)`.
    pub fn describe(&self) -> String {
        match (&self.framebuffer, &self.preview_png) {
            _ if !self.enabled => "off".into(),
            (Some(fb), _) => format!("{} ({}x{} {:?})", fb.display(), self.width, self.height, self.pixel_format),
            (None, Some(png)) => format!("preview {} ({}x{})", png.display(), self.width, self.height),
            (None, None) => "off".into(),
        }
    }

    /// Check ranges.
    ///
    /// # Errors
    /// A message naming the first bad key: `width` or `height` outside 16..=4096,
    /// `stride_bytes` below `width * bytes per pixel`.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [("width", self.width), ("height", self.height)] {
            if !(16..=4096).contains(&v) {
                return Err(format!("{key} = {v} is outside 16..=4096"));
            }
        }
        let row = self.width as usize * self.pixel_format.bytes_per_pixel();
        match self.stride_bytes {
            Some(s) if s < row => Err(format!("stride_bytes = {s} is below width * bytes per pixel = {row}")),
            _ => Ok(()),
        }
    }
}

/// Errors of the status display; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The configuration is out of range (see [`DisplayConfig::validate`]).
    #[error("invalid [display] config: {0}")]
    Config(String),
    /// The framebuffer could not be opened for writing (missing, or no permission: add the
    /// user to the `video` group).
    #[error("{path}: cannot open framebuffer for writing: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// Writing the framebuffer or the PNG preview (or creating its directory) failed.
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// The panel could not be encoded as PNG.
    #[error("{path}: cannot encode PNG: {source}")]
    Png { path: PathBuf, source: image::ImageError },
}

/// Where frames go.
enum Sink {
    Off,
    Framebuffer { path: PathBuf, file: File },
    Png(PathBuf),
}

/// The status panel output: draws [`PanelState`]s at the configured size and writes them to the
/// framebuffer or the PNG preview, at most once per `refresh_ms` (see [`StatusDisplay::show`]).
pub struct StatusDisplay {
    config: DisplayConfig,
    sink: Sink,
    last_draw: Option<Instant>,
}

impl StatusDisplay {
    /// Check `config` and open the framebuffer for writing (without truncating) when one is
    /// configured. With `enabled = false`, or neither `framebuffer` nor `preview_png`, the
    /// display does nothing.
    ///
    /// # Errors
    /// [`DisplayError::Config`] when `config` is out of range, [`DisplayError::Open`] when the
    /// framebuffer cannot be opened.
    pub fn new(config: &DisplayConfig) -> Result<Self, DisplayError> {
        config.validate().map_err(DisplayError::Config)?;
        let sink = match (&config.framebuffer, &config.preview_png) {
            _ if !config.enabled => Sink::Off,
            (Some(path), _) => {
                let file = OpenOptions::new().write(true).open(path);
                let file = file.map_err(|source| DisplayError::Open { path: path.clone(), source })?;
                Sink::Framebuffer { path: path.clone(), file }
            }
            (None, Some(path)) => {
                probe_writable(path)?;
                Sink::Png(path.clone())
            }
            (None, None) => Sink::Off,
        };
        Ok(StatusDisplay { config: config.clone(), sink, last_draw: None })
    }

    /// Draw and write `state` unless the previous frame is less than `refresh_ms` old (then do
    /// nothing: call it as often as convenient).
    ///
    /// # Errors
    /// As [`StatusDisplay::show_now`].
    pub fn show(&mut self, state: &PanelState) -> Result<(), DisplayError> {
        if self.due() { self.show_now(state) } else { Ok(()) }
    }

    /// Whether [`StatusDisplay::show`] would draw now: the display is on and the previous frame
    /// is at least `refresh_ms` old (lets a caller skip building a [`PanelState`]).
    pub fn due(&self) -> bool {
        let interval = Duration::from_millis(self.config.refresh_ms);
        !matches!(self.sink, Sink::Off) && self.last_draw.is_none_or(|t| t.elapsed() >= interval)
    }

    /// Draw and write `state` now, whatever the time since the previous frame (e.g. the final
    /// "offline" frame). The framebuffer gets `stride * height` bytes from offset 0; the PNG is
    /// written to a temporary file beside it and renamed, so a viewer never sees half a file.
    ///
    /// # Errors
    /// [`DisplayError::Write`] when the framebuffer or the PNG (or its directory) cannot be
    /// written, [`DisplayError::Png`] when PNG encoding fails.
    pub fn show_now(&mut self, state: &PanelState) -> Result<(), DisplayError> {
        if matches!(self.sink, Sink::Off) {
            return Ok(());
        }
        self.last_draw = Some(Instant::now());
        let panel = draw_panel(state, self.config.width, self.config.height);
        match &mut self.sink {
            Sink::Off => Ok(()),
            Sink::Framebuffer { path, file } => {
                let bytes = encode(&panel, self.config.pixel_format, self.config.stride_bytes);
                let written = file.seek(SeekFrom::Start(0)).and_then(|_| file.write_all(&bytes));
                written.map_err(|source| DisplayError::Write { path: path.clone(), source })
            }
            Sink::Png(path) => write_png(&panel, path),
        }
    }
}

/// Write `img` as PNG to `path` through a temporary file in the same directory and a rename.
/// Check at start that the PNG preview can be written: its folder is created and a file written
/// and removed beside it.
fn probe_writable(path: &Path) -> Result<(), DisplayError> {
    let io_error = |source| DisplayError::Write { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let probe = path.with_file_name(format!(".{name}.probe"));
    fs::write(&probe, b"").and_then(|()| fs::remove_file(&probe)).map_err(io_error)
}

fn write_png(img: &RgbImage, path: &Path) -> Result<(), DisplayError> {
    let io_error = |source| DisplayError::Write { path: path.to_path_buf(), source };
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|source| DisplayError::Png { path: path.to_path_buf(), source })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    fs::write(&tmp, &png).and_then(|()| fs::rename(&tmp, path)).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;
    use crate::display::panel_layout;

    const RED: Rgb<u8> = Rgb([255, 0, 0]);

    fn red_blue() -> RgbImage {
        RgbImage::from_fn(2, 1, |x, _| if x == 0 { RED } else { Rgb([0, 0, 255]) })
    }

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mcm-edge-fb-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A panel with a red output, as the service would hand it over.
    fn state() -> PanelState {
        PanelState { device_id: "edge-1".into(), last_output: Some(RgbImage::from_pixel(64, 64, RED)), ..Default::default() }
    }

    fn config(framebuffer: Option<PathBuf>, preview_png: Option<PathBuf>) -> DisplayConfig {
        DisplayConfig { enabled: true, framebuffer, preview_png, ..Default::default() }
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

    #[test]
    fn config_parses_defaults_and_checks_ranges() {
        let c: DisplayConfig = toml::from_str("enabled = true\npixel_format = \"xrgb8888\"").unwrap();
        assert_eq!((c.width, c.height, c.refresh_ms, c.pixel_format), (320, 240, 500, PixelFormat::Xrgb8888));
        assert_eq!(c.preview_png.as_deref(), Some(Path::new("out/status.png")));
        assert!(toml::from_str::<DisplayConfig>("widht = 3").is_err(), "unknown keys are refused");
        assert!(c.validate().is_ok());
        let bad = |c: DisplayConfig| c.validate().unwrap_err();
        assert!(bad(DisplayConfig { width: 8, ..c.clone() }).starts_with("width"));
        assert!(bad(DisplayConfig { height: 5000, ..c.clone() }).starts_with("height"));
        assert!(bad(DisplayConfig { stride_bytes: Some(320 * 4 - 1), ..c.clone() }).starts_with("stride_bytes"));
        assert!(DisplayConfig { stride_bytes: Some(320 * 4), ..c }.validate().is_ok());
    }

    #[test]
    fn framebuffer_file_gets_the_encoded_panel() {
        let fb = temp_dir("fb").join("fb0");
        fs::write(&fb, b"").unwrap(); // a regular file standing in for /dev/fb0
        let mut display = StatusDisplay::new(&config(Some(fb.clone()), None)).unwrap();
        display.show(&state()).unwrap();
        let bytes = fs::read(&fb).unwrap();
        assert_eq!(bytes.len(), 320 * 240 * 2);
        let centre = panel_layout(320, 240).output.center();
        let at = (centre.y as usize * 320 + centre.x as usize) * 2;
        let v = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        assert_eq!((v >> 11, (v >> 5) & 0x3F, v & 0x1F), (31, 0, 0), "output tile centre decodes to red");
    }

    #[test]
    fn png_preview_is_the_panel_and_is_rate_limited() {
        let png = temp_dir("png").join("sub/status.png");
        let mut display = StatusDisplay::new(&config(None, Some(png.clone()))).unwrap();
        display.show(&state()).unwrap();
        let read = image::open(&png).unwrap().to_rgb8();
        assert_eq!(read, draw_panel(&state(), 320, 240));
        assert!(!png.with_file_name(".status.png.tmp").exists());
        fs::remove_file(&png).unwrap();
        display.show(&state()).unwrap();
        assert!(!png.exists(), "a second frame within refresh_ms is skipped");
        display.show_now(&state()).unwrap();
        assert!(png.exists(), "show_now ignores refresh_ms");
    }

    #[test]
    fn disabled_display_writes_nothing() {
        let png = temp_dir("off").join("status.png");
        let mut display = StatusDisplay::new(&DisplayConfig { preview_png: Some(png.clone()), ..Default::default() }).unwrap();
        display.show_now(&state()).unwrap();
        assert!(!png.exists());
    }

    #[test]
    fn missing_framebuffer_is_an_error_naming_it() {
        let fb = temp_dir("missing").join("fb9");
        let err = StatusDisplay::new(&config(Some(fb.clone()), None)).err().expect("missing framebuffer");
        assert!(matches!(err, DisplayError::Open { .. }));
        assert!(err.to_string().contains(&fb.display().to_string()), "{err}");
        let err = StatusDisplay::new(&DisplayConfig { width: 1, ..Default::default() }).err().expect("bad width");
        assert!(matches!(err, DisplayError::Config(_)), "{err}");
    }
}
