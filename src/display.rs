//! Pictures for people: the demo's contact sheet, drawn with embedded-graphics onto an RGB image
//! (the same draw target serves a status panel on a framebuffer).

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use image::{Rgb, RgbImage, imageops};
use ndarray::Array2;

use crate::cond::ModalityMap;
use crate::model_info::ModalityInfo;

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
                self.0.put_pixel(p.x as u32, p.y as u32, Rgb([c.r(), c.g(), c.b()]));
            }
        }
        Ok(())
    }
}

/// Draw `text` with its top-left corner at (x, y) in the 6x10 font.
pub fn draw_text(img: &mut RgbImage, text: &str, x: i32, y: i32, color: [u8; 3]) {
    let style = MonoTextStyle::new(&FONT_6X10, Rgb888::new(color[0], color[1], color[2]));
    let _ = Text::with_baseline(text, Point::new(x, y), style, Baseline::Top).draw(&mut ImageTarget(img));
}

/// A modality map as a picture: palette colours for a segmentation, dark strokes on white for a sketch.
pub fn render_map(map: &ModalityMap, modality: &ModalityInfo) -> RgbImage {
    let pixel = |ids: &Array2<u8>, y: usize, x: usize| {
        modality.classes.get(ids[[y, x]] as usize).map_or([255, 0, 255], |c| c.color)
    };
    match map {
        ModalityMap::Segmentation(ids) => {
            let (h, w) = ids.dim();
            RgbImage::from_fn(w as u32, h as u32, |x, y| Rgb(pixel(ids, y as usize, x as usize)))
        }
        ModalityMap::Sketch(s) => {
            let (h, w) = s.dim();
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let v = (255.0 * (1.0 - s[[y as usize, x as usize]].clamp(0.0, 1.0))) as u8;
                Rgb([v, v, v])
            })
        }
    }
}

/// A grid of images with a title row: `rows[r][c]` drawn at `scale`x (nearest), `titles[c]` above column c.
pub fn contact_sheet(titles: &[&str], rows: &[Vec<RgbImage>], scale: u32) -> RgbImage {
    const HEADER: u32 = 14;
    const GAP: u32 = 4;
    let cell = rows.iter().flatten().map(|i| i.width().max(i.height())).max().unwrap_or(16) * scale;
    let cols = titles.len().max(rows.iter().map(Vec::len).max().unwrap_or(0)) as u32;
    let width = cols * (cell + GAP) + GAP;
    let height = HEADER + rows.len() as u32 * (cell + GAP) + GAP;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (c, title) in titles.iter().enumerate() {
        draw_text(&mut sheet, title, (GAP + c as u32 * (cell + GAP)) as i32, 2, [0, 0, 0]);
    }
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let big = imageops::resize(img, img.width() * scale, img.height() * scale, imageops::FilterType::Nearest);
            let (x, y) = (GAP + c as u32 * (cell + GAP), HEADER + r as u32 * (cell + GAP));
            imageops::replace(&mut sheet, &big, x as i64, y as i64);
        }
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_places_cells_and_titles() {
        let red = RgbImage::from_pixel(8, 8, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(8, 8, Rgb([0, 0, 255]));
        let sheet = contact_sheet(&["map", "out"], &[vec![red, blue]], 2);
        // Cell 0 starts at (4, 14), 16x16; cell 1 at (24, 14).
        assert_eq!(sheet.get_pixel(4 + 8, 14 + 8), &Rgb([255, 0, 0]));
        assert_eq!(sheet.get_pixel(24 + 8, 14 + 8), &Rgb([0, 0, 255]));
        // Title text is drawn in black inside the header band.
        let dark = (0..sheet.width()).flat_map(|x| (0..12).map(move |y| (x, y))).filter(|&(x, y)| sheet.get_pixel(x, y)[0] < 128).count();
        assert!(dark > 10, "title pixels: {dark}");
    }

    #[test]
    fn segmentation_renders_in_palette_colours() {
        let m = ModalityInfo {
            name: "segmentation".into(),
            kind: crate::model_info::ModalityKind::Segmentation,
            channels: 2,
            classes: vec![
                crate::model_info::ClassInfo { name: "a".into(), color: [1, 2, 3] },
                crate::model_info::ClassInfo { name: "b".into(), color: [4, 5, 6] },
            ],
        };
        let ids = Array2::from_shape_fn((2, 2), |(_, x)| x as u8);
        let img = render_map(&ModalityMap::Segmentation(ids), &m);
        assert_eq!(img.get_pixel(0, 0), &Rgb([1, 2, 3]));
        assert_eq!(img.get_pixel(1, 1), &Rgb([4, 5, 6]));
    }
}
