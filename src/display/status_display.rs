//! [`StatusDisplay`]: draws the status panel at the configured size and sends it to the
//! framebuffer or, without one, to a PNG preview.
//!
//! The framebuffer is written as a plain file (seek to 0, write one whole frame), without ioctls,
//! so `width`, `height`, `pixel_format` and `stride_bytes` must match the device: see `fbset -i`
//! or `/sys/class/graphics/fb0/{virtual_size,bits_per_pixel,stride}`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};

use super::config::{DisplayConfig, DisplayConfigError};
use super::framebuffer::encode;
use super::panel::{PanelState, draw_panel};

/// Errors of the status display; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The configuration is out of range (see [`DisplayConfig::validate`]).
    #[error("invalid [display] config: {0}")]
    Config(#[from] DisplayConfigError),
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
        config.validate()?;
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
