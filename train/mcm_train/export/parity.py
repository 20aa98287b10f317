"""Parity vectors: what both halves compute, written by the exporter and replayed by the Rust tests
(`tests/parity.rs`), so that the trainer and the device provably agree on

- the noise schedule: `schedule.alpha_bar.npy`, f64 [T] (`contract.schedule.alpha_bar`);
- frame preprocessing: `frames/MODALITY.CASE.png` fixture frames in the encodings users send
  (palette colours, palette PNGs, 8/16-bit and 1-bit class ids, grey + alpha, EXIF orientation,
  soft and coloured strokes, transparent backgrounds, 8/16-bit dense maps) with
  `frames/MODALITY.CASE.npy`, the map `data.preprocess` reads from each (segmentation uint8
  [H, W]; sketch f32 [1, H, W]; dense f32 [C, H, W]); `frames/index.json` lists them;
- the `cond` layout: `cond.all.npy` (every modality from its first case) and `cond.first.npy`
  (only the first modality), f32 [1, K, H, W] (`contract.modalities.build_cond`).

Frames are at the model's size: the trainer never resizes maps (dataset maps must match the
images), the device's resizing is tested on its own.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..contract.modalities import ModalitySpec, build_cond
from ..contract.model_toml import modalities_from_toml, read_model_toml
from ..contract.schedule import ScheduleConfig, alpha_bar
from ..data.preprocess import map_from_image, open_map, palette_array

#: Max abs difference the Rust replay allows per kind (segmentation ids must be equal).
TOLERANCE = {"segmentation": 0.0, "sketch": 1e-4, "dense": 1e-5}
#: EXIF orientation 6: rotate 90 degrees clockwise to display.
_ROTATE_CW = 6


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _png(img: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **params)
    return buf.getvalue()


def _rotated_png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """`pixels` stored turned 90 degrees counter-clockwise, with EXIF orientation 6 (turn 90 degrees
    clockwise to display): decoded with the orientation applied, the frame is `pixels` again."""
    return _png(Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1)), mode=mode), exif=_exif(_ROTATE_CW))


def _ids(size: int, n: int) -> np.ndarray:
    """A class-id pattern uint8 [size, size] with every class, irregular enough to catch flips."""
    y, x = np.mgrid[0:size, 0:size]
    return ((x // 2 + 3 * (y // 3) + (x * y) // 7) % n).astype(np.uint8)


def _strokes(size: int) -> np.ndarray:
    """Soft strokes f32 [size, size] in [0, 1]: a cross, a diagonal and an anti-aliased circle."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    ring = np.clip(1.5 - np.abs(np.hypot(y - c, x - c) - size / 3), 0, 1)
    lines = ((np.abs(x - size // 4) < 1) | (np.abs(y - size // 2) < 1) | (x == y)).astype(np.float32)
    return np.maximum(ring, lines)


def _segmentation_cases(spec: ModalitySpec, size: int) -> dict[str, bytes]:
    n = spec.channels
    ids = _ids(size, n)
    palette = palette_array(spec.class_infos())
    rgb = palette[ids].astype(np.int16)
    # well within the 40-unit tolerance, and nearer to its own colour than to any other of the palette
    jitter = np.random.default_rng(0).integers(-12, 13, rgb.shape)
    soft = np.clip(rgb + jitter, 0, 255).astype(np.uint8)
    order = np.random.default_rng(1).permutation(n)
    indexed = Image.fromarray(np.argsort(order)[ids].astype(np.uint8), mode="P")
    indexed.putpalette(palette[order].reshape(-1).tolist())
    alpha = (np.arange(size * size).reshape(size, size) * 37 % 256).astype(np.uint8)
    cases = {
        "rgb": _png(Image.fromarray(soft)),
        "palette": _png(indexed),
        "grey": _png(Image.fromarray(ids, mode="L")),
        "grey16": _png(Image.fromarray(ids.astype(np.uint16))),
        "grey_alpha": _png(Image.fromarray(np.stack([ids, alpha], -1), mode="LA")),
        "rgba": _png(Image.fromarray(np.dstack([palette[ids], alpha]), mode="RGBA")),
        "exif": _rotated_png(palette[ids]),
    }
    if n >= 2:
        cases["bilevel"] = _png(Image.fromarray((ids % 2).astype(bool)))
        cases["soft_brush"] = _png(_soft_brush(palette, size))
    return cases


def _soft_brush(palette: np.ndarray, size: int) -> Image.Image:
    """Quarters of four classes (and from 32 px a diagonal band of a fifth), painted with a soft
    brush: edges Gaussian-blurred (sigma size / 64, at least 0.5 px), so that anti-aliased, blended
    and far pixels are there for the device to resolve, within its 20 % far share."""
    y, x = np.mgrid[0:size, 0:size]
    n = len(palette)
    ids = (x // max(1, size // 2) + 2 * (y // max(1, size // 2))) % n
    if size >= 32:
        ids = np.where(np.abs(x - y) < size // 8, 4 % n, ids)
    return Image.fromarray(palette[ids].astype(np.uint8)).filter(ImageFilter.GaussianBlur(max(0.5, size / 64)))


def _sketch_cases(size: int) -> dict[str, bytes]:
    s = _strokes(size)
    dark = np.round(255 * (1 - s)).astype(np.uint8)
    paper = np.stack([245 - 200 * s, 240 - 150 * s, 225 - 40 * s], -1).round().astype(np.uint8)  # blue ink
    page = np.dstack([np.repeat(dark[..., None], 3, -1), np.full_like(dark, 255)])
    page[: size // 4, : size // 4, 3] = 0  # a transparent corner on an opaque page
    return {
        "dark_on_light": _png(Image.fromarray(dark, mode="L")),
        "light_on_dark": _png(Image.fromarray(255 - dark, mode="L")),
        "grey16": _png(Image.fromarray(np.round(65535 * (1 - s)).astype(np.uint16))),
        "coloured_ink": _png(Image.fromarray(paper)),
        "transparent": _png(Image.fromarray(np.dstack([np.zeros((size, size, 3), np.uint8),
                                                       np.round(255 * s).astype(np.uint8)]), mode="RGBA")),
        "grey_alpha": _png(Image.fromarray(np.stack([dark, np.full_like(dark, 200)], -1), mode="LA")),
        "page_with_corner": _png(Image.fromarray(page, mode="RGBA")),
        "exif": _rotated_png(dark, "L"),
    }


def _dense_cases(spec: ModalitySpec, size: int) -> dict[str, bytes]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    ramp = np.clip(0.7 * y + 0.3 * x * x, 0, 1)
    rgb = np.stack([ramp, 1 - ramp, x], -1)
    rgba = np.dstack([rgb, 0.5 + 0.5 * y])
    cases = {
        "grey16": _png(Image.fromarray(np.round(65535 * ramp).astype(np.uint16))),
        "grey8": _png(Image.fromarray(np.round(255 * ramp).astype(np.uint8), mode="L")),
        "rgb": _png(Image.fromarray(np.round(255 * rgb).astype(np.uint8))),
        "rgba": _png(Image.fromarray(np.round(255 * rgba).astype(np.uint8), mode="RGBA")),
        "exif": _rotated_png(np.round(65535 * ramp).astype(np.uint16)),
    }
    if spec.channels in (1, 3):
        cases["grey_alpha"] = _png(Image.fromarray(np.round(255 * np.stack([ramp, x], -1)).astype(np.uint8), mode="LA"))
    return cases


_CASES: dict[str, Callable[[ModalitySpec, int], dict[str, bytes]]] = {
    "segmentation": _segmentation_cases,
    "sketch": lambda spec, size: _sketch_cases(size),
    "dense": _dense_cases,
}


def _cond_input(spec: ModalitySpec, m: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(m.astype(np.int64) if spec.kind == "segmentation" else m)
    return t[None]


def write_parity_vectors(model_dir: Path) -> list[dict]:
    """Write the parity vectors (module doc) for the schedule and modalities of `model_dir/model.toml`
    into `model_dir/test_vectors/`; returns the frame index.

    Raises:
        KeyError: model.toml has no `[image]` or `[schedule]`.
        DataError: a fixture frame does not decode (a bug in the fixtures).
    """
    doc = read_model_toml(model_dir)
    size = int(doc["image"]["size"])
    vec = model_dir / "test_vectors"
    (vec / "frames").mkdir(parents=True, exist_ok=True)
    np.save(vec / "schedule.alpha_bar.npy", alpha_bar(ScheduleConfig.from_toml(doc["schedule"])).numpy())
    modalities = modalities_from_toml(doc)
    index, first = [], {}
    for spec in modalities:
        for case, data in _CASES[spec.kind](spec, size).items():
            stem = f"{spec.name}.{case}"
            frame = vec / "frames" / f"{stem}.png"
            frame.write_bytes(data)
            m = map_from_image(open_map(frame), spec, frame)
            np.save(vec / "frames" / f"{stem}.npy", m)
            index.append({"modality": spec.name, "kind": spec.kind, "case": case, "frame": f"{stem}.png",
                          "map": f"{stem}.npy", "tolerance": TOLERANCE[spec.kind]})
            first.setdefault(spec.name, m)
    (vec / "frames" / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    if not modalities:  # a bare base: the schedule only
        return index
    maps = {s.name: _cond_input(s, first[s.name]) for s in modalities}
    for name, present in (("all", [True] * len(modalities)), ("first", [j == 0 for j in range(len(modalities))])):
        cond = build_cond(modalities, maps, torch.tensor([present]))
        np.save(vec / f"cond.{name}.npy", cond.numpy().astype(np.float32))
    return index
