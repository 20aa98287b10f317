//! Nearest class colour of a segmentation pixel, and how far to trust it.
//!
//! Frames painted with ordinary brushes are not clean label maps: anti-aliased edges, soft
//! brushes and JPEG ringing put colours between classes. Each colour is matched to its nearest
//! class colour and graded ([`Certainty`]): exact enough to keep, a likely mix of two other
//! classes, or too far from every class. The segmentation decoder keeps the sure pixels and gives
//! the others the class of their neighbourhood.

use crate::contract::ClassInfo;

/// Largest Euclidean RGB distance (0-255 per channel) at which a pixel still counts as painted
/// with the nearest palette colour; pixels further from every class are "far" (anti-aliasing,
/// JPEG ringing, or not a label map at all). Palette colours should be further apart than twice
/// this.
pub const PALETTE_TOLERANCE: f32 = 40.0;

/// Distance within which a colour always keeps its nearest class, even where it could also be a
/// mix of two other classes (JPEG noise on a flat region stays well within it).
const SURE_DISTANCE: f32 = 24.0;

/// How a colour relates to its nearest class colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Certainty {
    /// Within [`PALETTE_TOLERANCE`], and not better explained as a mix of two other classes.
    Sure,
    /// Within [`PALETTE_TOLERANCE`] of a class, but much closer to a blend of two other classes
    /// (e.g. the anti-aliased edge between grass and sky passing near water).
    Blend,
    /// Further than [`PALETTE_TOLERANCE`] from every class.
    Far,
}

/// Nearest-colour lookup over a model's classes, with a small direct-mapped cache (label maps,
/// even anti-aliased ones, have few distinct colours).
pub(super) struct Palette<'a> {
    classes: &'a [ClassInfo],
    cache: Vec<Option<([u8; 3], u8, Certainty)>>,
}

const CACHE_BITS: u32 = 12;

impl<'a> Palette<'a> {
    /// A lookup over `classes` (ids are their indices; at most 256 are used).
    pub(super) fn new(classes: &'a [ClassInfo]) -> Self {
        Self { classes: &classes[..classes.len().min(256)], cache: vec![None; 1 << CACHE_BITS] }
    }

    /// Whether the palette has no classes (every colour is then [`Certainty::Far`], id 0).
    pub(super) fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The id of the nearest class colour (first one on ties) and how sure it is.
    pub(super) fn lookup(&mut self, rgb: [u8; 3]) -> (u8, Certainty) {
        let key = u32::from_le_bytes([rgb[0], rgb[1], rgb[2], 0]);
        let slot = (key.wrapping_mul(0x9E37_79B1) >> (32 - CACHE_BITS)) as usize;
        if let Some((c, id, certainty)) = self.cache[slot]
            && c == rgb
        {
            return (id, certainty);
        }
        let (id, certainty) = self.grade(rgb);
        self.cache[slot] = Some((rgb, id, certainty));
        (id, certainty)
    }

    fn grade(&self, rgb: [u8; 3]) -> (u8, Certainty) {
        let p = rgb.map(f32::from);
        let Some((id, d2)) = self.classes.iter().map(|c| dist2(p, c.color.map(f32::from))).enumerate().fold(None, nearer)
        else {
            return (0, Certainty::Far);
        };
        let d = d2.sqrt();
        let certainty = if d > PALETTE_TOLERANCE {
            Certainty::Far
        } else if d > SURE_DISTANCE && self.blend_distance(p, id) < d / 2.0 {
            Certainty::Blend
        } else {
            Certainty::Sure
        };
        (id as u8, certainty)
    }

    /// Distance from `p` to the nearest mix `(1 - a) A + a B`, `a` in [0.15, 0.85], of two
    /// classes other than `nearest` (infinite with fewer than three classes).
    fn blend_distance(&self, p: [f32; 3], nearest: usize) -> f32 {
        let colours: Vec<[f32; 3]> =
            self.classes.iter().enumerate().filter(|(i, _)| *i != nearest).map(|(_, c)| c.color.map(f32::from)).collect();
        let mut best = f32::INFINITY;
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                best = best.min(segment_distance(p, *a, *b));
            }
        }
        best
    }
}

/// The smaller of two `(index, squared distance)` (the first on ties).
fn nearer(best: Option<(usize, f32)>, next: (usize, f32)) -> Option<(usize, f32)> {
    match best {
        Some(b) if b.1 <= next.1 => Some(b),
        _ => Some(next),
    }
}

fn dist2(a: [f32; 3], b: [f32; 3]) -> f32 {
    (0..3).map(|k| (a[k] - b[k]).powi(2)).sum()
}

/// Distance from `p` to the middle 70 % of the segment `a`-`b` (mixing weights 0.15..=0.85).
fn segment_distance(p: [f32; 3], a: [f32; 3], b: [f32; 3]) -> f32 {
    let ab: [f32; 3] = std::array::from_fn(|k| b[k] - a[k]);
    let len2 = dist2(a, b);
    if len2 == 0.0 {
        return f32::INFINITY;
    }
    let t = ((0..3).map(|k| (p[k] - a[k]) * ab[k]).sum::<f32>() / len2).clamp(0.15, 0.85);
    dist2(p, std::array::from_fn(|k| a[k] + t * ab[k])).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(colours: &[[u8; 3]]) -> Vec<ClassInfo> {
        colours.iter().enumerate().map(|(i, c)| ClassInfo { name: format!("c{i}"), color: *c }).collect()
    }

    #[test]
    fn grades_exact_near_blended_and_far_colours() {
        // Black, white, red, green.
        let cs = classes(&[[0, 0, 0], [255, 255, 255], [200, 40, 40], [40, 200, 40]]);
        let mut p = Palette::new(&cs);
        assert_eq!(p.lookup([0, 0, 0]), (0, Certainty::Sure));
        assert_eq!(p.lookup([20, 10, 15]), (0, Certainty::Sure)); // 26 away, no mix explains it better
        // Halfway between the red and the green: [120, 120, 40] is far from all four.
        assert_eq!(p.lookup([120, 120, 40]).1, Certainty::Far);
        // A class (0) that lies on the mix of two others (1 and 2).
        let cs = classes(&[[100, 100, 100], [160, 100, 100], [40, 100, 100]]);
        let mut p = Palette::new(&cs);
        assert_eq!(p.lookup([100, 100, 100]), (0, Certainty::Sure));
        assert_eq!(p.lookup([100, 100, 110]), (0, Certainty::Sure)); // within SURE_DISTANCE
        // 25 from class 0 along the mixing line (35 from class 1): nearest 0, but a 0.7 mix
        // of classes 2 and 1 is exactly this colour: a blend.
        assert_eq!(p.lookup([125, 100, 100]), (0, Certainty::Blend));
        // The same distance off the mixing line is not a blend.
        assert_eq!(p.lookup([100, 125, 100]), (0, Certainty::Sure));
        // No classes: far.
        let none: Vec<ClassInfo> = vec![];
        let mut p = Palette::new(&none);
        assert!(p.is_empty());
        assert_eq!(p.lookup([1, 2, 3]), (0, Certainty::Far));
    }

    #[test]
    fn cached_lookups_agree_with_fresh_ones() {
        let cs = classes(&[[0, 0, 0], [255, 255, 255], [200, 40, 40]]);
        let mut p = Palette::new(&cs);
        for r in (0..=255u8).step_by(5) {
            for g in (0..=255u8).step_by(17) {
                let rgb = [r, g, 255 - r];
                let first = p.lookup(rgb);
                assert_eq!(p.lookup(rgb), first);
                assert_eq!(p.grade(rgb), first);
            }
        }
    }
}
