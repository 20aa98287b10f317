//! `[display]` of `edge.toml` ([`DisplayConfig`]): the status panel's size, output and refresh.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::framebuffer::PixelFormat;

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
    /// [`DisplayConfigError`] naming the first bad key: `width` or `height` outside 16..=4096,
    /// `stride_bytes` below `width * bytes per pixel`.
    pub fn validate(&self) -> Result<(), DisplayConfigError> {
        for (key, value) in [("width", self.width), ("height", self.height)] {
            if !(16..=4096).contains(&value) {
                return Err(DisplayConfigError::Side { key, value });
            }
        }
        let row = self.width as usize * self.pixel_format.bytes_per_pixel();
        match self.stride_bytes {
            Some(stride) if stride < row => Err(DisplayConfigError::Stride { stride, row }),
            _ => Ok(()),
        }
    }
}

/// A `[display]` value out of range; the message starts with the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayConfigError {
    /// `width` or `height` (`key`) outside 16..=4096.
    #[error("{key} = {value} is outside 16..=4096")]
    Side { key: &'static str, value: u32 },
    /// `stride_bytes` shorter than a row of pixels.
    #[error("stride_bytes = {stride} is below width * bytes per pixel = {row}")]
    Stride { stride: usize, row: usize },
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn config_parses_defaults_and_checks_ranges() {
        let c: DisplayConfig = toml::from_str("enabled = true\npixel_format = \"xrgb8888\"").unwrap();
        assert_eq!((c.width, c.height, c.refresh_ms, c.pixel_format), (320, 240, 500, PixelFormat::Xrgb8888));
        assert_eq!(c.preview_png.as_deref(), Some(Path::new("out/status.png")));
        assert!(toml::from_str::<DisplayConfig>("widht = 3").is_err(), "unknown keys are refused");
        assert!(c.validate().is_ok());
        let bad = |c: DisplayConfig| c.validate().unwrap_err().to_string();
        assert!(bad(DisplayConfig { width: 8, ..c.clone() }).starts_with("width"));
        assert!(bad(DisplayConfig { height: 5000, ..c.clone() }).starts_with("height"));
        assert!(bad(DisplayConfig { stride_bytes: Some(320 * 4 - 1), ..c.clone() }).starts_with("stride_bytes"));
        assert!(DisplayConfig { stride_bytes: Some(320 * 4), ..c }.validate().is_ok());
    }
}
