"""Paired data: the built-in procedural landscape scenes and any folder dataset with the same layout.

Layout of a dataset folder (what `mcm-train data scenes` writes and what `load_dataset` reads)::

    DIR/images/NNNN.png        RGB image
    DIR/segmentation/NNNN.png  class map: palette-colour RGB (colours from config/classes.toml)
                               or single-channel class ids
    DIR/sketch/NNNN.png        edge map: dark strokes on a light background (or the reverse)
    DIR/manifest.json          what wrote it (optional for user datasets)

Files are paired by stem; a modality folder may be missing (then that modality is absent).
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.feature import canny

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLASSES = REPO_ROOT / "config" / "classes.toml"
#: Largest distance (Euclidean, 0-255 RGB units) between a pixel and its nearest palette colour.
PALETTE_TOLERANCE = 40.0
#: Modalities the loader knows, in the order their channels are stacked into `cond`.
MODALITY_KINDS = ("segmentation", "sketch")


class DataError(ValueError):
    """A dataset file is missing, unreadable or does not match the palette / size."""


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class: `name` and its palette `color` (RGB, 0-255)."""

    name: str
    color: tuple[int, int, int]


def load_classes(path: Path = DEFAULT_CLASSES) -> list[ClassInfo]:
    """Read the class list (`[[classes]]` with `name`, `color`) from a TOML file.

    Raises:
        DataError: the file is missing or a class lacks a name or a 3-value colour.
    """
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: cannot read class list: {e}") from e
    classes = []
    for i, c in enumerate(table.get("classes", [])):
        color = c.get("color")
        if "name" not in c or not isinstance(color, list) or len(color) != 3:
            raise DataError(f"{path}: class {i} needs `name` and `color = [r, g, b]`")
        classes.append(ClassInfo(str(c["name"]), (int(color[0]), int(color[1]), int(color[2]))))
    if len(classes) < 2:
        raise DataError(f"{path}: at least 2 classes are needed, found {len(classes)}")
    return classes


# --------------------------------------------------------------------------------------------
# Procedural scenes
# --------------------------------------------------------------------------------------------

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


def scene_labels(rng: np.random.Generator, size: int, n_classes: int) -> np.ndarray:
    """Random scene layout: class ids [size, size] (uint8), ids as in config/classes.toml order
    (0 sky, 1 cloud, 2 mountain, 3 water, 4 grass, 5 tree, 6 sand, 7 rock)."""
    if n_classes < 8:
        raise DataError(f"the scene generator draws 8 classes, the class list has {n_classes}")
    sky, cloud, mountain, water, grass, tree, sand, rock = range(8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    x = xx[0]
    horizon = 0.42 + 0.25 * rng.random()
    labels = np.full((size, size), sky, np.uint8)

    for _ in range(rng.integers(0, 4)):  # clouds: unions of ellipses
        cy, cx = rng.uniform(0.05, horizon - 0.1), rng.uniform(0, 1)
        for _ in range(rng.integers(2, 5)):
            labels[_ellipse(yy, xx, cy + rng.normal(0, 0.02), cx + rng.normal(0, 0.06),
                            rng.uniform(0.03, 0.07), rng.uniform(0.06, 0.16))] = cloud

    if rng.random() < 0.85:  # one or two mountain ranges
        for _ in range(rng.integers(1, 3)):
            ridge = _ridge(rng, x, horizon, rng.uniform(0.1, horizon - 0.05))
            labels[(yy >= ridge[None, :]) & (yy < horizon)] = mountain

    ground = grass if rng.random() < 0.7 else sand
    labels[yy >= horizon] = ground
    if rng.random() < 0.65:  # a lake or sea below the horizon, with a wavy shore
        depth = rng.uniform(0.08, 0.35) * (1 - horizon)
        shore = horizon + depth + 0.04 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * x + rng.random() * 6)
        if rng.random() < 0.5:  # the lake ends somewhere across the width
            lo, hi = sorted(rng.uniform(-0.3, 1.3, 2))
            inside = (x >= lo) & (x <= hi)
            shore = np.where(inside, shore, horizon)
        wet = (yy >= horizon) & (yy < shore[None, :])
        labels[wet] = water
        if ground == grass and rng.random() < 0.6:  # a beach along the shore
            beach = (yy >= shore[None, :]) & (yy < shore[None, :] + rng.uniform(0.03, 0.08))
            labels[beach & (yy >= horizon)] = sand

    for _ in range(rng.integers(0, 4)):  # rocks on the ground
        cy = rng.uniform(horizon + 0.05, 1.0)
        r = 0.03 + 0.08 * (cy - horizon)
        m = _ellipse(yy, xx, cy, rng.uniform(0, 1), r, r * rng.uniform(1, 2)) & (yy >= horizon)
        labels[m & (labels != water)] = rock

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
        labels[m] = tree
    return labels


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


def palette_array(classes: list[ClassInfo]) -> np.ndarray:
    """Palette as uint8 [K, 3] in class-id order."""
    return np.array([c.color for c in classes], np.uint8)


def write_scenes(out: Path, count: int, size: int, seed: int, classes: list[ClassInfo]) -> None:
    """Write `count` procedural scenes of `size` x `size` pixels to `out` (layout in the module doc).

    Deterministic: scene i depends only on (`seed`, i).
    """
    if count < 1 or size < 16:
        raise DataError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    for sub in ("images", "segmentation", "sketch"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    palette = palette_array(classes)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        labels = scene_labels(rng, size, len(classes))
        image = render_scene(rng, labels)
        name = f"{i:05d}.png"
        Image.fromarray(image).save(out / "images" / name)
        Image.fromarray(palette[labels]).save(out / "segmentation" / name)
        Image.fromarray(np.where(sketch_of(image), 0, 255).astype(np.uint8)).save(out / "sketch" / name)
    manifest = {"generator": "mcm-train scenes v1", "count": count, "size": size, "seed": seed,
                "classes": [{"name": c.name, "color": list(c.color)} for c in classes]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def labels_from_image(img: Image.Image, classes: list[ClassInfo], path: Path) -> np.ndarray:
    """Class ids uint8 [H, W] from a segmentation image: single-channel ids, or RGB palette colours
    matched to the nearest palette colour within `PALETTE_TOLERANCE`.

    Raises:
        DataError: an id is out of range or a colour is far from every palette colour.
    """
    if img.mode in ("L", "I", "I;16"):
        ids = np.asarray(img).astype(np.int64)
        if ids.max() >= len(classes):
            raise DataError(f"{path}: class id {ids.max()} but only {len(classes)} classes")
        return ids.astype(np.uint8)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    dist = np.linalg.norm(rgb[:, :, None, :] - palette_array(classes)[None, None].astype(np.float32), axis=-1)
    ids = dist.argmin(-1)
    worst = dist.min(-1).max()
    if worst > PALETTE_TOLERANCE:
        raise DataError(f"{path}: a pixel is {worst:.0f} away from every palette colour "
                        f"(tolerance {PALETTE_TOLERANCE:.0f})")
    return ids.astype(np.uint8)


def strokes_from_image(img: Image.Image) -> np.ndarray:
    """Stroke mask float32 [H, W] in [0, 1] from a sketch image.

    Transparent pixels are background: the image is composited onto white when its opaque pixels
    are dark and onto black when they are light. Dark-on-light vs light-on-dark is then detected
    from the median (the background is the majority)."""
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    gray, alpha = rgba[..., :3].mean(-1), rgba[..., 3]
    opaque = alpha >= 0.5
    if (~opaque).mean() > 0.05:
        ink = gray[opaque].mean() if opaque.any() else 0.0
        gray = gray * alpha + (1.0 if ink < 0.5 else 0.0) * (1 - alpha)
    strokes = (1.0 - gray) if np.median(gray) > 0.5 else gray
    return strokes.clip(0, 1).astype(np.float32)


@dataclass
class Dataset:
    """A paired dataset in memory.

    Attributes:
        images: float32 [N, 3, S, S] in [-1, 1].
        segmentation: uint8 [N, S, S] class ids, or None when the folder has no maps.
        sketch: float32 [N, 1, S, S] in [0, 1] (1 on a stroke), or None.
        classes: the palette used to read the maps.
        stems: file stems, in order.
    """

    images: np.ndarray
    segmentation: np.ndarray | None
    sketch: np.ndarray | None
    classes: list[ClassInfo]
    stems: list[str]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _open(path: Path, size: int) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise DataError(f"{path}: not a readable image: {e}") from e
    if img.size != (size, size):
        raise DataError(f"{path}: size {img.size[0]}x{img.size[1]}, expected {size}x{size} like the images")
    return img


#: Decoded arrays of a dataset folder, beside it, reused while no file changed (see `load_dataset`).
CACHE_NAME = ".mcm-cache.npz"


def _fingerprint(paths: list[Path], classes: list[ClassInfo]) -> str:
    """Hash of every file's name, size and modification time, and of the palette."""
    h = hashlib.sha1(repr([(c.name, tuple(c.color)) for c in classes]).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _dataset_files(root: Path, paths: list[Path]) -> list[Path]:
    """The image files and every existing paired map file."""
    files = list(paths)
    for folder in (root / "segmentation", root / "sketch"):
        if folder.is_dir():
            files.extend(_pair(folder, p) for p in paths)
    return files


def _read_cache(root: Path, key: str, classes: list[ClassInfo]) -> Dataset | None:
    try:
        with np.load(root / CACHE_NAME, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return Dataset(
                images=z["images"].astype(np.float32) / 127.5 - 1.0,
                segmentation=z["segmentation"] if z["segmentation"].size else None,
                sketch=z["sketch"] if z["sketch"].size else None,
                classes=classes,
                stems=[str(x) for x in z["stems"]],
            )
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(root: Path, key: str, ds: Dataset, images_u8: np.ndarray) -> None:
    """Best effort: a read-only dataset folder just is not cached."""
    tmp = root / f".mcm-cache.{os.getpid()}.tmp.npz"
    empty = np.zeros((0,), np.float32)
    try:
        np.savez(tmp, key=np.array(key), images=images_u8, stems=np.array(ds.stems),
                 segmentation=ds.segmentation if ds.segmentation is not None else empty,
                 sketch=ds.sketch if ds.sketch is not None else empty)
        tmp.replace(root / CACHE_NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


def load_dataset(root: Path, classes: list[ClassInfo] | None = None, limit: int | None = None) -> Dataset:
    """Load a dataset folder (layout in the module doc) into memory. All images must be square and
    of one size. `classes` defaults to the manifest's list, else config/classes.toml.

    Decoding a few thousand PNGs and matching palette colours takes tens of seconds, so the arrays
    are kept in `DIR/.mcm-cache.npz` (images as uint8) and reused while no file's name, size or
    modification time and not the palette changed: every resumed training run loads in a second.

    Raises:
        DataError: the folder has no images, sizes differ, or a map cannot be read.
    """
    root = Path(root)
    manifest = root / "manifest.json"
    if classes is None:
        if manifest.exists():
            classes = [ClassInfo(c["name"], tuple(c["color"])) for c in json.loads(manifest.read_text())["classes"]]
        else:
            classes = load_classes()
    paths = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise DataError(f"{root}/images: no PNG or JPEG images")
    key = _fingerprint(_dataset_files(root, paths), classes)
    cached = _read_cache(root, key, classes)
    if cached is not None:
        return cached
    first = Image.open(paths[0])
    size = first.size[0]
    if first.size[0] != first.size[1]:
        raise DataError(f"{paths[0]}: images must be square, got {first.size}")
    images, segs, sketches = [], [], []
    seg_dir, sk_dir = root / "segmentation", root / "sketch"
    for p in paths:
        images.append(np.asarray(_open(p, size).convert("RGB"), np.uint8))
        if seg_dir.is_dir():
            segs.append(labels_from_image(_open(_pair(seg_dir, p), size), classes, p))
        if sk_dir.is_dir():
            sketches.append(strokes_from_image(_open(_pair(sk_dir, p), size)))
    images_u8 = np.stack(images).transpose(0, 3, 1, 2).copy()
    ds = Dataset(
        images=images_u8.astype(np.float32) / 127.5 - 1.0,
        segmentation=np.stack(segs) if segs else None,
        sketch=np.stack(sketches)[:, None] if sketches else None,
        classes=classes,
        stems=[p.stem for p in paths],
    )
    _write_cache(root, key, ds, images_u8)
    return ds


def _pair(folder: Path, image_path: Path) -> Path:
    for ext in (".png", ".jpg", ".jpeg", image_path.suffix):
        cand = folder / (image_path.stem + ext)
        if cand.exists():
            return cand
    raise DataError(f"{folder}: no map for {image_path.name} (files are paired by stem)")
