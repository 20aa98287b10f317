//! Drawing with embedded-graphics onto an `image::RgbImage` ([`ImageTarget`]), and text.

use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use image::{Rgb, RgbImage};

/// An `image::RgbImage` as an embedded-graphics draw target (pixels outside are clipped).
pub struct ImageTarget<'a>(pub &'a mut RgbImage);

impl OriginDimensions for ImageTarget<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for ImageTarget<'_> {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        let (w, h) = (self.0.width() as i32, self.0.height() as i32);
        for Pixel(p, c) in pixels {
            if (0..w).contains(&p.x) && (0..h).contains(&p.y) {
                self.0.put_pixel(p.x as u32, p.y as u32, rgb(c));
            }
        }
        Ok(())
    }
}

/// Draw `text` with its top-left corner at (x, y) in the 6x10 font.
pub fn draw_text(img: &mut RgbImage, text: &str, x: i32, y: i32, color: [u8; 3]) {
    draw_text_in(&mut ImageTarget(img), text, Point::new(x, y), Rgb888::new(color[0], color[1], color[2]), &FONT_6X10);
}

/// Draw `text` with its top-left corner at `at` in `font` on any RGB draw target.
pub(super) fn draw_text_in<D: DrawTarget<Color = Rgb888>>(target: &mut D, text: &str, at: Point, color: Rgb888, font: &MonoFont) {
    let _ = Text::with_baseline(text, at, MonoTextStyle::new(font, color), Baseline::Top).draw(target);
}


/// An embedded-graphics colour as an `image` pixel.
pub(super) fn rgb(c: Rgb888) -> Rgb<u8> {
    Rgb([c.r(), c.g(), c.b()])
}
