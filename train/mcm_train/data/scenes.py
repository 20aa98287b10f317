"""The built-in procedural landscape scenes: images with exact segmentation maps, Canny sketches
and depth maps (`mcm-train data scenes`; folder layout in `data.folder`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.feature import canny

from ..contract.modalities import ClassInfo, ModalitySpec
from .classes import DataError
from .preprocess import palette_array

#: Depth convention of the scenes' `depth/` maps: inverse depth (disparity) normalised to [0, 1],
#: 1 nearest (the bottom row of the ground), 0 at infinity (the sky), as monocular depth
#: estimators such as MiDaS output it. Written as 16-bit grey PNG.
DEPTH = "inverse depth in [0, 1]: 1 nearest, 0 at infinity"


DEPTH_HORIZON = 0.12  # the ground at the horizon


DEPTH_CLOUD = 0.03


DEPTH_MOUNTAIN = (0.06, 0.09)  # first and second range


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1], shape [size, size]: a `cells` x `cells` random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _ridge(rng: np.random.Generator, x: np.ndarray, base: float, amplitude: float) -> np.ndarray:
    """A mountain ridge line y(x) (fractions of the height): a sum of random sines below `base`."""
    y = np.zeros_like(x)
    for octave in range(3):
        freq = (1.0 + rng.random() * 1.5) * (2**octave)
        y += (0.45**octave) * np.sin(2 * np.pi * freq * x + rng.random() * 2 * np.pi)
    y = (y - y.min()) / max(float(np.ptp(y)), 1e-6)
    return base - amplitude * y


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def scene_layers(rng: np.random.Generator, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Random scene layout: class ids uint8 [size, size] (ids in config/classes.toml order: 0 sky,
    1 cloud, 2 mountain, 3 water, 4 grass, 5 tree, 6 sand, 7 rock) and its depth float32
    [size, size] in [0, 1] (`DEPTH` for the convention).

    The generator knows every layer's distance: the ground (grass, sand, water) is a plane seen from
    eye height, so its inverse depth grows linearly from the horizon to the bottom row; mountain
    ranges stand behind the ground (a range painted later is nearer), clouds far above it, the sky at
    infinity (0); rocks and trees stand upright on the ground and take its value at their foot.
    """
    if n_classes < 8:
        raise DataError(f"the scene generator draws 8 classes, the class list has {n_classes}")
    sky, cloud, mountain, water, grass, tree, sand, rock = range(8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = xx[0]
    horizon = 0.42 + 0.25 * rng.random()
    labels = np.full((size, size), sky, np.uint8)
    depth = np.zeros((size, size), np.float32)

    def ground(y: np.ndarray | float) -> np.ndarray | float:
        """Inverse depth of the ground plane at image row y (fraction of the height)."""
        return DEPTH_HORIZON + (1 - DEPTH_HORIZON) * np.clip((y - horizon) / (1 - horizon), 0, 1)

    def paint(mask: np.ndarray, cls: int, d: np.ndarray | float) -> None:
        labels[mask] = cls
        depth[mask] = (np.broadcast_to(d, mask.shape))[mask]

    for _ in range(rng.integers(0, 4)):  # clouds: unions of ellipses
        cy, cx = rng.uniform(0.05, horizon - 0.1), rng.uniform(0, 1)
        for _ in range(rng.integers(2, 5)):
            paint(_ellipse(yy, xx, cy + rng.normal(0, 0.02), cx + rng.normal(0, 0.06),
                           rng.uniform(0.03, 0.07), rng.uniform(0.06, 0.16)), cloud, DEPTH_CLOUD)

    if rng.random() < 0.85:  # one or two mountain ranges
        for r in range(rng.integers(1, 3)):
            ridge = _ridge(rng, x, horizon, rng.uniform(0.1, horizon - 0.05))
            paint((yy >= ridge[None, :]) & (yy < horizon), mountain, DEPTH_MOUNTAIN[r])

    ground_cls = grass if rng.random() < 0.7 else sand
    paint(yy >= horizon, ground_cls, ground(yy))
    if rng.random() < 0.65:  # a lake or sea below the horizon, with a wavy shore
        extent = rng.uniform(0.08, 0.35) * (1 - horizon)
        shore = horizon + extent + 0.04 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * x + rng.random() * 6)
        if rng.random() < 0.5:  # the lake ends somewhere across the width
            lo, hi = sorted(rng.uniform(-0.3, 1.3, 2))
            inside = (x >= lo) & (x <= hi)
            shore = np.where(inside, shore, horizon)
        wet = (yy >= horizon) & (yy < shore[None, :])
        paint(wet, water, ground(yy))
        if ground_cls == grass and rng.random() < 0.6:  # a beach along the shore
            beach = (yy >= shore[None, :]) & (yy < shore[None, :] + rng.uniform(0.03, 0.08))
            paint(beach & (yy >= horizon), sand, ground(yy))

    for _ in range(rng.integers(0, 4)):  # rocks on the ground
        cy = rng.uniform(horizon + 0.05, 1.0)
        r = 0.03 + 0.08 * (cy - horizon)
        m = _ellipse(yy, xx, cy, rng.uniform(0, 1), r, r * rng.uniform(1, 2)) & (yy >= horizon)
        paint(m & (labels != water), rock, ground(min(cy + r, 1.0)))

    for _ in range(rng.integers(0, 7)):  # trees: conifers (triangles) or round canopies with trunks
        base_y = rng.uniform(horizon, 1.0)
        cx = rng.uniform(0, 1)
        height = 0.1 + 0.35 * (base_y - horizon + 0.05)
        if labels[min(int(base_y * size), size - 1), min(int(cx * size), size - 1)] == water:
            continue
        if rng.random() < 0.5:
            half = height * rng.uniform(0.25, 0.4) * (base_y - yy) / height
            m = (yy <= base_y) & (yy >= base_y - height) & (np.abs(xx - cx) <= half)
        else:
            trunk = (np.abs(xx - cx) <= height * 0.06) & (yy <= base_y) & (yy >= base_y - height * 0.5)
            m = trunk | _ellipse(yy, xx, base_y - height * 0.65, cx, height * 0.35, height * 0.3)
        paint(m, tree, ground(base_y))
    return labels, depth


def render_scene(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """Paint an RGB image (uint8 [H, W, 3]) for a label map: per-class colours with random hue,
    gradients, texture noise and a global light level (day, dusk, overcast)."""
    size = labels.shape[0]
    yy = np.mgrid[0:size, 0:size][0].astype(np.float32) / size
    light = rng.uniform(0.65, 1.15)
    mood = rng.choice(["day", "dusk", "overcast"], p=[0.6, 0.2, 0.2])
    tint = {"day": np.array([1.0, 1.0, 1.0]), "dusk": np.array([1.15, 0.85, 0.75]),
            "overcast": np.array([0.9, 0.93, 0.97])}[mood]

    def jitter(rgb: tuple[float, float, float], amount: float = 0.12) -> np.ndarray:
        return np.clip(np.array(rgb) * (1 + rng.uniform(-amount, amount, 3)), 0, 1)

    top = jitter({"day": (0.25, 0.45, 0.85), "dusk": (0.3, 0.25, 0.55), "overcast": (0.6, 0.63, 0.68)}[mood])
    bottom = jitter({"day": (0.65, 0.8, 0.95), "dusk": (0.98, 0.6, 0.35), "overcast": (0.8, 0.8, 0.82)}[mood])
    sky_grad = top[None, None, :] * (1 - yy[..., None]) + bottom[None, None, :] * yy[..., None]
    base_colors = {
        1: jitter((0.95, 0.95, 0.97), 0.05),
        2: jitter((0.45, 0.4, 0.45), 0.25),
        4: jitter((0.25, 0.55, 0.2), 0.25),
        5: jitter((0.1, 0.35, 0.12), 0.25),
        6: jitter((0.85, 0.75, 0.5), 0.12),
        7: jitter((0.5, 0.48, 0.45), 0.15),
    }
    img = np.zeros((size, size, 3), np.float32)
    img[:] = sky_grad
    fine = _smooth_noise(rng, size, max(size // 4, 2))[..., None] - 0.5
    coarse = _smooth_noise(rng, size, 4)[..., None] - 0.5
    for cls, color in base_colors.items():
        m = labels == cls
        shade = 1 + 0.35 * coarse + (0.5 if cls in (4, 5, 7) else 0.2) * fine
        if cls == 2:  # mountains: darker at the foot, lighter peaks
            shade = shade * (1.15 - 0.4 * yy[..., None])
        img[m] = (color[None, None, :] * shade)[m]
    water = labels == 3
    if water.any():
        deep = jitter((0.1, 0.3, 0.55), 0.2)
        refl = 0.5 * np.flip(sky_grad, axis=0) + 0.5 * deep[None, None, :]
        ripples = 1 + 0.25 * (_smooth_noise(rng, size, size // 2) - 0.5)
        img[water] = (refl * ripples[..., None])[water]
    img = np.clip(img * light * tint[None, None, :], 0, 1)
    pil = Image.fromarray((img * 255).astype(np.uint8))
    return np.asarray(pil)


def sketch_of(image: np.ndarray) -> np.ndarray:
    """Edge map of an RGB image (uint8 [H, W, 3]) by Canny (sigma 1.0 on the luma, thresholds
    at the 80th/90th percentile of the gradient magnitude): bool [H, W], True on an edge."""
    gray = np.asarray(Image.fromarray(image).convert("L"), dtype=np.float32) / 255.0
    return canny(gray, sigma=1.0, low_threshold=0.8, high_threshold=0.9, use_quantiles=True)


def scene_modalities(classes: list[ClassInfo]) -> list[ModalitySpec]:
    """The modalities `write_scenes` writes: segmentation (the palette), sketch, depth (dense, 1 channel)."""
    return [ModalitySpec("segmentation", "segmentation", len(classes),
                         [{"name": c.name, "color": list(c.color)} for c in classes]),
            ModalitySpec("sketch", "sketch", 1),
            ModalitySpec("depth", "dense", 1)]


def write_scenes(out: Path, count: int, size: int, seed: int, classes: list[ClassInfo]) -> None:
    """Write `count` procedural scenes of `size` x `size` pixels to `out` (layout in the module doc):
    images, segmentation maps (palette colours), Canny sketches and depth maps (16-bit, `DEPTH`).

    Deterministic: scene i depends only on (`seed`, i).

    Raises:
        DataError: count < 1 or size < 16.
    """
    if count < 1 or size < 16:
        raise DataError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    modalities = scene_modalities(classes)
    for sub in ("images", *(m.name for m in modalities)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = palette_array(classes)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        labels, depth = scene_layers(rng, size, len(classes))
        image = render_scene(rng, labels)
        name = f"{i:05d}.png"
        Image.fromarray(image).save(out / "images" / name)
        Image.fromarray(palette[labels]).save(out / "segmentation" / name)
        Image.fromarray(np.where(sketch_of(image), 0, 255).astype(np.uint8)).save(out / "sketch" / name)
        Image.fromarray(np.round(depth * 65535).astype(np.uint16)).save(out / "depth" / name)
    manifest = {"generator": "mcm-train scenes v2", "count": count, "size": size, "seed": seed,
                "classes": [{"name": c.name, "color": list(c.color)} for c in classes],
                "modalities": [m.to_toml() | ({"convention": DEPTH} if m.name == "depth" else {})
                               for m in modalities]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


