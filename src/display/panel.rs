//! The device's status panel ([`draw_panel`]): header with the device id and broker state, the
//! last input and output, and the counters, laid out for any screen size ([`panel_layout`]).
//! [`super::StatusDisplay`] puts it on a screen.

use embedded_graphics::mono_font::MonoFont;
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_9X15};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle, RoundedRectangle};
use image::{RgbImage, imageops};

use super::draw::{ImageTarget, draw_text_in, rgb};

const BACKGROUND: Rgb888 = Rgb888::new(16, 18, 24);
const HEADER_BG: Rgb888 = Rgb888::new(36, 40, 52);
const PLACEHOLDER: Rgb888 = Rgb888::new(44, 46, 54);
const TEXT: Rgb888 = Rgb888::new(235, 235, 235);
const DIM: Rgb888 = Rgb888::new(150, 150, 160);
const GREEN: Rgb888 = Rgb888::new(40, 190, 80);
const AMBER: Rgb888 = Rgb888::new(255, 180, 0);
const RED: Rgb888 = Rgb888::new(225, 50, 50);
/// Statistics lines drawn by [`draw_panel`] (latency, queue, images, errors).
const STATS_LINES: u32 = 4;
/// Width in characters reserved for the statistics when they sit beside the tiles.
const STATS_CHARS: u32 = 16;

/// Connection state of the device's MQTT client, shown as a coloured badge in the panel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerState {
    /// Connecting or reconnecting to the broker (amber badge).
    #[default]
    Connecting,
    /// Connected to the broker (green badge).
    Online,
    /// Not connected and not trying, e.g. shutting down (red badge).
    Offline,
}

impl BrokerState {
    /// Short lower-case label shown in the badge: `connecting`, `online` or `offline`.
    pub fn label(self) -> &'static str {
        match self {
            BrokerState::Connecting => "connecting",
            BrokerState::Online => "online",
            BrokerState::Offline => "offline",
        }
    }

    fn color(self) -> Rgb888 {
        match self {
            BrokerState::Connecting => AMBER,
            BrokerState::Online => GREEN,
            BrokerState::Offline => RED,
        }
    }
}

/// What the status panel shows; the service fills it in and hands it to [`draw_panel`] (or to
/// [`super::StatusDisplay::show`]).
#[derive(Debug, Clone, Default)]
pub struct PanelState {
    /// Device identifier (`mqtt.device_id`), shown at the left of the header (cut to fit).
    pub device_id: String,
    /// Broker connection state, shown as a badge at the right of the header.
    pub broker: BrokerState,
    /// Picture of the last input map (e.g. from [`super::render_map`]), any size; `None` before the
    /// first frame (drawn as a "no input" placeholder).
    pub last_input: Option<RgbImage>,
    /// The last generated image (e.g. 64x64), any size; `None` before the first generation.
    pub last_output: Option<RgbImage>,
    /// Wall time of the last generation in milliseconds; `None` is shown as `-`.
    pub last_latency_ms: Option<u64>,
    /// Requests waiting for generation.
    pub queue_depth: usize,
    /// Capacity of the request queue (`limits.queue_depth`).
    pub queue_capacity: usize,
    /// Images generated since the start.
    pub images_generated: u64,
    /// Errors answered since the start (drawn in amber when not 0).
    pub errors: u64,
}

/// Where [`draw_panel`] puts things on a panel, in pixels from its top-left corner
/// (see [`panel_layout`]).
#[derive(Clone, Copy)]
pub struct PanelLayout {
    /// Header band across the top: device id at the left, broker badge at the right.
    pub header: Rectangle,
    /// Square tile of the last input (caption `input` just below it).
    pub input: Rectangle,
    /// Square tile of the last output, right of the input tile (caption `output` below it).
    pub output: Rectangle,
    /// Area of the statistics lines: below the tiles, or at their right when that gives bigger
    /// tiles (wide, short panels such as 480x272).
    pub stats: Rectangle,
    /// Font of every text: 6x10 below 480 pixels of width, 9x15 from 480.
    pub font: &'static MonoFont<'static>,
}

/// The layout of a `width` x `height` panel (pixels). Every rectangle lies inside the panel; on
/// panels too small for the texts the tiles shrink to nothing rather than overflow.
pub fn panel_layout(width: u32, height: u32) -> PanelLayout {
    let font = if width >= 480 { &FONT_9X15 } else { &FONT_6X10 };
    let (cw, line) = (font.character_size.width, line_height(font));
    let m = (width.min(height) / 40).max(3);
    let header = rect(0, 0, width, header_height(font).min(height));
    let top = header.size.height + m;
    // Room for the tiles and their captions, above the bottom margin.
    let room = height.saturating_sub(top + line + m);
    let below = (width.saturating_sub(3 * m) / 2).min(room.saturating_sub(STATS_LINES * line + m));
    let beside = (width.saturating_sub(4 * m + STATS_CHARS * cw) / 2).min(room);
    let tile = below.max(beside);
    let (x0, stats) = if beside > below {
        let x = 3 * m + 2 * tile;
        (m, rect(x, top, width - x - m, STATS_LINES * line))
    } else {
        let x0 = width.saturating_sub(2 * tile + m) / 2;
        (x0, rect(x0, top + tile + line + m, width.saturating_sub(x0 + m), STATS_LINES * line))
    };
    let stats = stats.intersection(&rect(0, 0, width, height));
    PanelLayout { header, input: rect(x0, top, tile, tile), output: rect(x0 + tile + m, top, tile, tile), stats, font }
}

/// The status panel as a `width` x `height` RGB picture (layout: [`panel_layout`]): a header
/// with the device id and the broker badge (green online, amber connecting, red offline), the
/// last input and output scaled (nearest) into two square tiles captioned `input` and `output`,
/// and the lines `latency N ms` (or `-`), `queue D/C`, `images N`, `errors N`.
pub fn draw_panel(state: &PanelState, width: u32, height: u32) -> RgbImage {
    let layout = panel_layout(width, height);
    let mut img = RgbImage::from_pixel(width, height, rgb(BACKGROUND));
    draw_header(&mut img, state, &layout);
    draw_tile(&mut img, layout.input, state.last_input.as_ref(), "input", layout.font);
    draw_tile(&mut img, layout.output, state.last_output.as_ref(), "output", layout.font);
    draw_stats(&mut img, state, &layout);
    img
}

fn rect(x: u32, y: u32, w: u32, h: u32) -> Rectangle {
    Rectangle::new(Point::new(x as i32, y as i32), Size::new(w, h))
}

fn line_height(font: &MonoFont) -> u32 {
    font.character_size.height + 2
}

fn header_height(font: &MonoFont) -> u32 {
    font.character_size.height * 3 / 2
}

fn fill(img: &mut RgbImage, area: Rectangle, color: Rgb888) {
    let _ = area.into_styled(PrimitiveStyle::with_fill(color)).draw(&mut ImageTarget(img));
}

/// Device id at the left, broker badge (rounded, state colour, black label) at the right.
fn draw_header(img: &mut RgbImage, state: &PanelState, layout: &PanelLayout) {
    let font = layout.font;
    let (cw, ch) = (font.character_size.width, font.character_size.height);
    let (band, pad) = (layout.header, (layout.header.size.height.saturating_sub(ch) / 2) as i32);
    fill(img, band, HEADER_BG);
    let label = state.broker.label();
    let badge_w = (label.len() as u32 + 1) * cw;
    let badge_x = band.size.width.saturating_sub(badge_w + cw / 2);
    let badge = rect(badge_x, 1, badge_w, band.size.height.saturating_sub(2));
    let radius = Size::new(ch / 3, ch / 3);
    let _ = RoundedRectangle::with_equal_corners(badge, radius)
        .into_styled(PrimitiveStyle::with_fill(state.broker.color()))
        .draw(&mut ImageTarget(img));
    draw_text_in(&mut ImageTarget(img), label, Point::new((badge_x + cw / 2) as i32, pad), Rgb888::BLACK, font);
    let room = (badge_x.saturating_sub(2 * cw) / cw) as usize;
    let id: String = state.device_id.chars().take(room).collect();
    draw_text_in(&mut ImageTarget(img), &id, Point::new(cw as i32, pad), TEXT, font);
}

/// A picture scaled (nearest, aspect kept, centred) into the square `tile`, or a dark
/// placeholder with "no <caption>"; the caption goes just below the tile.
fn draw_tile(img: &mut RgbImage, tile: Rectangle, picture: Option<&RgbImage>, caption: &str, font: &MonoFont) {
    fill(img, tile, PLACEHOLDER);
    let side = tile.size.width;
    match picture.filter(|p| side > 0 && p.width() > 0 && p.height() > 0) {
        Some(p) => {
            let longest = p.width().max(p.height());
            let (w, h) = ((p.width() * side / longest).max(1), (p.height() * side / longest).max(1));
            let scaled = imageops::resize(p, w, h, imageops::FilterType::Nearest);
            let at = tile.top_left + Point::new(((side - w) / 2) as i32, ((side - h) / 2) as i32);
            imageops::replace(img, &scaled, at.x as i64, at.y as i64);
        }
        None => {
            let missing = format!("no {caption}");
            let size = Size::new(missing.len() as u32 * font.character_size.width, font.character_size.height);
            let at = tile.center() - Point::new(size.width as i32 / 2, size.height as i32 / 2);
            draw_text_in(&mut ImageTarget(img).clipped(&tile), &missing, at, DIM, font);
        }
    }
    draw_text_in(&mut ImageTarget(img), caption, tile.top_left + Point::new(0, side as i32 + 1), DIM, font);
}

fn draw_stats(img: &mut RgbImage, state: &PanelState, layout: &PanelLayout) {
    let latency = state.last_latency_ms.map_or("-".into(), |ms| format!("{ms} ms"));
    let lines = [
        (format!("latency {latency}"), TEXT),
        (format!("queue {}/{}", state.queue_depth, state.queue_capacity), TEXT),
        (format!("images {}", state.images_generated), TEXT),
        (format!("errors {}", state.errors), if state.errors > 0 { AMBER } else { TEXT }),
    ];
    let line = line_height(layout.font) as i32;
    for (i, (text, color)) in (0..).zip(lines) {
        draw_text_in(&mut ImageTarget(img), &text, layout.stats.top_left + Point::new(0, i * line), color, layout.font);
    }
}


#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn solid(color: [u8; 3]) -> Option<RgbImage> {
        Some(RgbImage::from_pixel(64, 64, Rgb(color)))
    }

    fn panel(broker: BrokerState) -> PanelState {
        PanelState {
            device_id: "edge-1".into(),
            broker,
            last_input: solid([0, 0, 255]),
            last_output: solid([255, 0, 0]),
            last_latency_ms: Some(1234),
            queue_depth: 2,
            queue_capacity: 8,
            images_generated: 42,
            errors: 0,
        }
    }

    /// Pixels of `area` in `img` for which `pred` holds.
    fn count(img: &RgbImage, area: Rectangle, pred: impl Fn([u8; 3]) -> bool) -> usize {
        area.points().filter(|p| pred(img.get_pixel(p.x as u32, p.y as u32).0)).count()
    }

    fn inside(r: Rectangle, w: u32, h: u32) -> bool {
        r.top_left.x >= 0 && r.top_left.y >= 0 && r.bottom_right().is_none_or(|p| p.x < w as i32 && p.y < h as i32)
    }

    #[test]
    fn panel_shows_tiles_text_and_badge() {
        let img = draw_panel(&panel(BrokerState::Online), 320, 240);
        let layout = panel_layout(320, 240);
        let at = |p: Point| img.get_pixel(p.x as u32, p.y as u32).0;
        assert_eq!(at(layout.output.center()), [255, 0, 0]);
        assert_eq!(at(layout.input.center()), [0, 0, 255]);
        assert!(layout.input.size.width > 100, "tiles use the room: {:?}", layout.input);
        let text = |c: [u8; 3]| rgb(TEXT).0 == c;
        let header_text = count(&img, layout.header, text);
        let stats_text = count(&img, layout.stats, text);
        assert!(header_text > 30 && stats_text > 150, "text pixels: header {header_text}, stats {stats_text}");
        let green = |[r, g, _]: [u8; 3]| g > 150 && r < 100;
        let red = |[r, g, _]: [u8; 3]| r > 180 && g < 100;
        assert!(count(&img, layout.header, green) > 100 && count(&img, layout.header, red) == 0);
        let offline = draw_panel(&panel(BrokerState::Offline), 320, 240);
        assert!(count(&offline, layout.header, red) > 100 && count(&offline, layout.header, green) == 0);
    }

    #[test]
    fn missing_images_are_placeholders() {
        let state = PanelState { last_input: None, last_output: None, ..panel(BrokerState::Connecting) };
        let img = draw_panel(&state, 320, 240);
        let layout = panel_layout(320, 240);
        for tile in [layout.input, layout.output] {
            assert_eq!(img.get_pixel(tile.top_left.x as u32, tile.top_left.y as u32), &rgb(PLACEHOLDER));
            assert!(count(&img, tile, |c| c == rgb(DIM).0) > 30, "placeholder text in {tile:?}");
        }
    }

    #[test]
    fn panel_fits_small_and_large_screens() {
        for (w, h) in [(160, 128), (320, 240), (480, 272), (800, 480), (1920, 1080), (240, 320)] {
            let img = draw_panel(&panel(BrokerState::Offline), w, h);
            let layout = panel_layout(w, h);
            assert_eq!(img.dimensions(), (w, h));
            for r in [layout.header, layout.input, layout.output, layout.stats] {
                assert!(inside(r, w, h) && r.size.width > 0, "{w}x{h}: {r:?} outside");
            }
            assert!(layout.input.size.width >= h / 3, "{w}x{h}: small tiles {:?}", layout.input);
            assert!(layout.output.top_left.x >= layout.input.bottom_right().unwrap().x, "{w}x{h}: tiles overlap");
            assert_eq!(img.get_pixel(layout.output.center().x as u32, layout.output.center().y as u32).0, [255, 0, 0]);
        }
        for (w, h) in [(16, 16), (4096, 16), (16, 4096), (1, 1)] {
            assert_eq!(draw_panel(&PanelState::default(), w, h).dimensions(), (w, h));
        }
    }
}
