//! Pictures for people: a modality map as an image ([`render_map`]) and the demo's contact sheet
//! ([`contact_sheet`]).

use image::{Rgb, RgbImage, imageops};
use ndarray::Array2;

use super::draw::draw_text;
use crate::contract::{ModalityInfo, ModalityMap};

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
        ModalityMap::Dense(d) => {
            let (c, h, w) = d.dim();
            let [lo, hi] = modality.value_range();
            let level = |k: usize, y: u32, x: u32| {
                (255.0 * ((d[[k.min(c - 1), y as usize, x as usize]] - lo) / (hi - lo)).clamp(0.0, 1.0)) as u8
            };
            // 3 or 4 channels as RGB, else the first channel as grey (depth: bright = near)
            let rgb = c >= 3;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                if rgb { Rgb([level(0, y, x), level(1, y, x), level(2, y, x)]) } else { Rgb([level(0, y, x); 3]) }
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
    use crate::contract::{ClassInfo, ModalityKind};

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
            kind: ModalityKind::Segmentation,
            channels: 2,
            classes: vec![
                ClassInfo { name: "a".into(), color: [1, 2, 3] },
                ClassInfo { name: "b".into(), color: [4, 5, 6] },
            ],
            value_range: None,
        };
        let ids = Array2::from_shape_fn((2, 2), |(_, x)| x as u8);
        let img = render_map(&ModalityMap::Segmentation(ids), &m);
        assert_eq!(img.get_pixel(0, 0), &Rgb([1, 2, 3]));
        assert_eq!(img.get_pixel(1, 1), &Rgb([4, 5, 6]));
    }
}

