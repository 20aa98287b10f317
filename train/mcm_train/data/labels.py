"""Class ids of colour segmentation maps painted with ordinary brushes, by the device's rules
(`src/frames/palette.rs`, `src/frames/segmentation.rs`; README "Frames").

Each colour takes its nearest class colour and is graded: *sure* within `PALETTE_TOLERANCE` and not
much closer (less than half the distance) to a 15-85 % mix of two other classes, unless within
`SURE_DISTANCE`; *blend* when such a mix explains it better; *far* beyond `PALETTE_TOLERANCE`. More
than `max_far_share` far pixels is not a label map. Every pixel that is not sure takes the majority
class of its sure 8-neighbours, in waves outwards from the sure pixels (ties: its own nearest class
when tied, else the lowest id), so a soft edge is split in its middle.
"""

from __future__ import annotations

import numpy as np

#: Largest distance (Euclidean, 0-255 RGB units) between a pixel and its nearest class colour for
#: the pixel to count as painted with it.
PALETTE_TOLERANCE = 40.0
#: Within this distance a colour always keeps its nearest class.
SURE_DISTANCE = 24.0
#: Default largest share of far pixels (`limits.max_far_share` on the device).
MAX_FAR_SHARE = 0.2

_SURE, _BLEND, _FAR = 0, 1, 2
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def grade_colours(colours: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest class, its distance and the grade of each colour.

    Args:
        colours: uint8 [N, 3].
        palette: uint8 [K, 3], K >= 1.

    Returns:
        ids int64 [N], distances float32 [N], grades int64 [N] (0 sure, 1 blend, 2 far).
    """
    p = colours.astype(np.float32)
    pal = palette.astype(np.float32)
    d2 = ((p[:, None, :] - pal[None]) ** 2).sum(-1)
    ids = d2.argmin(-1)
    d = np.sqrt(np.take_along_axis(d2, ids[:, None], -1)[:, 0])
    blend = np.full(len(p), np.inf, np.float32)
    k = len(pal)
    for a in range(k):
        for b in range(a + 1, k):
            ab = pal[b] - pal[a]
            len2 = float((ab**2).sum())
            if len2 == 0.0:
                continue
            t = np.clip(((p - pal[a]) * ab).sum(-1) / len2, 0.15, 0.85)
            dist = np.sqrt(((p - (pal[a] + t[:, None] * ab)) ** 2).sum(-1))
            other = (ids != a) & (ids != b)
            blend = np.where(other, np.minimum(blend, dist), blend)
    grades = np.where(d > PALETTE_TOLERANCE, _FAR, np.where((d > SURE_DISTANCE) & (blend < d / 2), _BLEND, _SURE))
    return ids, d, grades


def fill_from_neighbours(ids: np.ndarray, sure: np.ndarray, classes: int) -> np.ndarray:
    """`ids` int64 [H, W] with every pixel that is not `sure` (bool [H, W]) given the majority class
    of its sure 8-neighbours, wave by wave (module doc). Unchanged without any sure pixel."""
    ids, sure = ids.copy(), sure.copy()
    h, w = ids.shape
    queued = sure.copy()
    wave = ~sure & _any_neighbour(sure)
    while wave.any():
        queued |= wave
        votes = np.zeros((classes, h, w), np.int64)
        for dy, dx in _NEIGHBOURS:
            s_ids, s_sure = _shift(ids, dy, dx, 0), _shift(sure, dy, dx, False)
            for c in range(classes):
                votes[c] += s_sure & (s_ids == c)
        top = votes.max(0)
        own = np.take_along_axis(votes, ids[None], 0)[0] == top
        winner = np.where(own, ids, votes.argmax(0))
        ids = np.where(wave, winner, ids)
        sure |= wave
        wave = ~queued & _any_neighbour(wave)
    return ids


def _shift(a: np.ndarray, dy: int, dx: int, fill: object) -> np.ndarray:
    """`a` moved so that out[y, x] = a[y + dy, x + dx] (`fill` outside)."""
    h, w = a.shape
    out = np.full_like(a, fill)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[yd, xd] = a[ys, xs]
    return out


def _any_neighbour(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: some 8-neighbour is in `mask`."""
    out = np.zeros_like(mask)
    for dy, dx in _NEIGHBOURS:
        out |= _shift(mask, dy, dx, False)
    return out


def colour_labels(rgb: np.ndarray, palette: np.ndarray, max_far_share: float = MAX_FAR_SHARE) -> tuple[np.ndarray, float]:
    """Class ids uint8 [H, W] of a colour map uint8 [H, W, 3] over `palette` uint8 [K, 3], and its
    share of far pixels; ids are None when that share exceeds `max_far_share` (not a label map)."""
    flat = rgb.reshape(-1, 3)
    colours, inverse = np.unique(flat, axis=0, return_inverse=True)
    ids, _, grades = grade_colours(colours, palette)
    ids, grades = ids[inverse.reshape(-1)].reshape(rgb.shape[:2]), grades[inverse.reshape(-1)].reshape(rgb.shape[:2])
    far_share = float((grades == _FAR).mean())
    if far_share > max_far_share:
        return None, far_share
    return fill_from_neighbours(ids, grades == _SURE, len(palette)).astype(np.uint8), far_share
