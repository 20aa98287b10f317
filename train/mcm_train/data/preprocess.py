"""Frame -> map preprocessing, the same rules as the device's decoder (`src/frames/`).

One definition for both halves: the trainer reads a dataset's maps with exactly the rules the
device applies to a frame that arrives over MQTT, and the exporter writes fixture frames with the
maps computed here (`write_preprocess_vectors`) for the Rust tests to replay.

Rules (README "Frames"):
- EXIF orientation is applied first (`ImageOps.exif_transpose`).
- Segmentation: single-channel images (1, 2, 4, 8 or 16-bit grey, grey + alpha) hold class ids
  directly (raw values, not rescaled); colour images (RGB, RGBA, palette PNGs; alpha ignored) may
  come from ordinary brushes: nearest class colours, with blended and far pixels taken from their
  neighbourhood (`labels`); more than 20 % far pixels is not a label map.
- Sketch: luminance is Rec. 709 luma (0.2126 R + 0.7152 G + 0.0722 B) in [0, 1]; pixels with
  alpha < 0.5 are transparent. When more than half of the pixels are transparent the stroke is
  the alpha coverage; otherwise the background level B is the lower median of the opaque
  luminances and the stroke strength is `alpha * (B - L) / B` (dark on light, B >= 0.5) or
  `alpha * (L - B) / (1 - B)` (light on dark), clamped to [0, 1].
- Dense (depth, normals, heatmaps): `channels` 1 (luma), 2 (luma + alpha), 3 (RGB) or 4 (RGBA),
  8- or 16-bit, each value scaled to [0, 1] by its bit depth (255 or 65535), then mapped linearly
  onto the modality's `value_range`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..contract.modalities import ClassInfo, ModalitySpec
from .classes import DataError
from .labels import MAX_FAR_SHARE, PALETTE_TOLERANCE, colour_labels

#: Pixels with alpha below this (alpha in [0, 1]) are transparent (sketches).
TRANSPARENT_BELOW = 0.5
#: Rec. 709 luma coefficients (the ones the `image` crate uses on the device).
REC709 = np.array([0.2126, 0.7152, 0.0722], np.float32)

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")
_16_BIT_MODES = ("I", "I;16", "I;16B", "I;16L")


def open_map(path: Path) -> Image.Image:
    """Open an image file and apply its EXIF orientation.

    Raises:
        DataError: not a readable image.
    """
    try:
        img = Image.open(path)
        img.load()
        return ImageOps.exif_transpose(img)
    except OSError as e:
        raise DataError(f"{path}: not a readable image: {e}") from e


def image_channels(img: Image.Image) -> int:
    """Channels of an image as a dense map would read them: grey 1 (any bit depth), grey + alpha 2,
    RGB, palette and any other mode 3, RGBA and palette + alpha 4."""
    if img.mode in _GREY_MODES:
        return 2 if img.mode == "LA" else 1
    return 4 if img.mode in ("RGBA", "PA") else 3


def palette_array(classes: list[ClassInfo]) -> np.ndarray:
    """Palette as uint8 [K, 3] in class-id order."""
    return np.array([c.color for c in classes], np.uint8)


def _grey_values(img: Image.Image) -> np.ndarray:
    """The first channel of a grey image as raw integer values int64 [H, W] (no rescaling)."""
    if img.mode == "LA":
        return np.asarray(img)[..., 0].astype(np.int64)
    return np.asarray(img).astype(np.int64)


def _rgb_u8(img: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] colours of a colour image (palette entries resolved, alpha dropped)."""
    return np.asarray(img.convert("RGB"), np.uint8)


def labels_from_image(img: Image.Image, classes: list[ClassInfo], path: Path | str) -> np.ndarray:
    """Class ids uint8 [H, W] from a segmentation image (rules in the module doc).

    Raises:
        DataError: an id is out of range (the message names `path`, the first such pixel (x, y) and
            its value), or a colour map with more than 20 % of its pixels farther than
            `PALETTE_TOLERANCE` from every class colour (the share in the message), as the device.
    """
    if img.mode in _GREY_MODES:
        ids = _grey_values(img)
        bad = np.argwhere(ids >= len(classes))
        if bad.size:
            y, x = bad[0]
            raise DataError(f"{path}: pixel (x={x}, y={y}) has class id {ids[y, x]}, but there are "
                           f"{len(classes)} classes (ids 0..={len(classes) - 1})")
        return ids.astype(np.uint8)
    ids, far_share = colour_labels(_rgb_u8(img), palette_array(classes))
    if ids is None:
        raise DataError(f"{path}: not a segmentation map: {100 * far_share:.1f} % of the pixels are further "
                        f"than {PALETTE_TOLERANCE:.0f} RGB units from every one of the {len(classes)} class "
                        f"colours (at most {100 * MAX_FAR_SHARE:.1f} % may be)")
    return ids


def luma_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(luminance, alpha), both float32 [H, W] in [0, 1]: grey values scaled by their bit depth,
    colours by Rec. 709 luma; alpha 1 where the image has none."""
    if img.mode in _16_BIT_MODES:
        return np.asarray(img).astype(np.float32) / 65535.0, np.ones(img.size[::-1], np.float32)
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), np.float32) / 255.0, np.ones(img.size[::-1], np.float32)
    if img.mode == "LA":
        la = np.asarray(img, np.float32) / 255.0
        return la[..., 0], la[..., 1]
    rgba = np.asarray(img.convert("RGBA"), np.float32) / 255.0
    return rgba[..., :3] @ REC709, rgba[..., 3]


def strokes_from_image(img: Image.Image) -> np.ndarray:
    """Stroke strength float32 [H, W] in [0, 1] (1 on a stroke) from a sketch image (rules in the
    module doc; the same as the device's `stroke_strength`)."""
    luma, alpha = luma_alpha(img)
    transparent = alpha < TRANSPARENT_BELOW
    if 2 * int(transparent.sum()) > transparent.size or transparent.all():
        return alpha.clip(0, 1).astype(np.float32)
    opaque = np.sort(luma[~transparent].clip(0, 1))
    bg = float(opaque[(opaque.size - 1) // 2])  # lower median: the background level
    a = alpha.clip(0, 1)
    strokes = a * (bg - luma) / bg if bg >= 0.5 else a * (luma - bg) / (1.0 - bg)
    return np.nan_to_num(strokes).clip(0, 1).astype(np.float32)


def dense_from_image(img: Image.Image, spec: ModalitySpec, path: Path | str) -> np.ndarray:
    """Values float32 [C, H, W] of a dense map (rules in the module doc), in `spec.value_range`.

    Raises:
        DataError: the modality has no 1-4 channels.
    """
    c = spec.channels
    if c not in (1, 2, 3, 4):
        raise DataError(f"{path}: modality {spec.name!r} has {c} channels; a dense map has 1 to 4")
    if c <= 2 or img.mode in _16_BIT_MODES:  # grey frames give their value in every colour channel
        luma, alpha = luma_alpha(img)
        chans = {1: [luma], 2: [luma, alpha], 3: [luma] * 3, 4: [luma] * 3 + [alpha]}[c]
    else:
        rgba = np.asarray(img.convert("RGBA"), np.float32) / 255.0
        chans = [rgba[..., i] for i in range(c)]
    lo, hi = spec.value_range
    return (lo + (hi - lo) * np.stack(chans)).astype(np.float32)


def map_from_image(img: Image.Image, spec: ModalitySpec, path: Path | str) -> np.ndarray:
    """The map of one modality from its image: segmentation uint8 [H, W] class ids, sketch
    float32 [1, H, W], dense float32 [C, H, W].

    Raises:
        DataError: the image does not fit the modality (see the kind's reader).
    """
    if spec.kind == "segmentation":
        return labels_from_image(img, spec.class_infos(), path)
    if spec.kind == "sketch":
        return strokes_from_image(img)[None]
    return dense_from_image(img, spec, path)
