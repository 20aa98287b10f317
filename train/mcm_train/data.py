"""Paired data: the built-in procedural landscape scenes and any folder dataset with the same layout.

Layout of a dataset folder (what `mcm-train data scenes` writes and what `load_dataset` reads)::

    DIR/images/NAME.png        RGB image (PNG or JPEG), all square and of one size
    DIR/<modality>/NAME.png    one folder per modality, maps paired with the images by file stem:
      segmentation/              class map: palette colours (config/classes.toml, or the manifest's
                                 `classes`) or single-channel class ids
      sketch/                    edge map: dark strokes on a light background (or the reverse)
      depth/ (or any name)       dense map: 8- or 16-bit grey (or RGB/RGBA for 3-4 channels)
    DIR/manifest.json          optional: `classes` (the palette) and `modalities` (kinds, below)

A folder named `segmentation` or `sketch` is that kind; any other folder beside `images/` is a dense
modality whose channels are read off its first file (grey 1, grey + alpha 2, RGB 3, RGBA 4) with
values in [0, 1]. The manifest's `modalities` list (`{"name", "kind", "channels", "value_range"}`)
overrides that. Maps are read with the device's rules (`preprocess`).
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

from .contract import ClassInfo, ModalitySpec
from .preprocess import MapError, map_from_image, open_map, palette_array

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLASSES = REPO_ROOT / "config" / "classes.toml"
#: Image file suffixes a dataset folder may hold.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Depth convention of the scenes' `depth/` maps: inverse depth (disparity) normalised to [0, 1],
#: 1 nearest (the bottom row of the ground), 0 at infinity (the sky), as monocular depth
#: estimators such as MiDaS output it. Written as 16-bit grey PNG.
DEPTH = "inverse depth in [0, 1]: 1 nearest, 0 at infinity"
DEPTH_HORIZON = 0.12  # the ground at the horizon
DEPTH_CLOUD = 0.03
DEPTH_MOUNTAIN = (0.06, 0.09)  # first and second range


class DataError(ValueError):
    """A dataset file is missing, unreadable or does not match the palette / size."""


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """A paired dataset in memory.

    Attributes:
        images: float32 [N, 3, S, S] in [-1, 1].
        maps: per modality name, its maps for every image: a segmentation's class ids uint8
            [N, S, S]; a sketch's strokes float32 [N, 1, S, S] in [0, 1]; a dense map's values
            float32 [N, C, S, S] in its value range.
        modalities: the modalities the folder holds (kinds, channels, palette), in folder order.
        classes: the palette used to read segmentation maps.
        stems: file stems, in order.
    """

    images: np.ndarray
    maps: dict[str, np.ndarray]
    modalities: list[ModalitySpec]
    classes: list[ClassInfo]
    stems: list[str]

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def modality(self, name: str) -> ModalitySpec:
        """The modality called `name`.

        Raises:
            DataError: the folder has no such modality (the message lists the ones it has).
        """
        for m in self.modalities:
            if m.name == name:
                return m
        have = ", ".join(m.name for m in self.modalities) or "none"
        raise DataError(f"the dataset has no {name!r} maps (it has: {have})")


def _read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON: {e}") from e


def _dataset_classes(root: Path, manifest: dict) -> list[ClassInfo]:
    """The manifest's `classes`, else config/classes.toml."""
    if "classes" not in manifest:
        return load_classes()
    try:
        return [ClassInfo(str(c["name"]), tuple(int(v) for v in c["color"])) for c in manifest["classes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{root / 'manifest.json'}: `classes` needs name and color = [r, g, b] per class: {e}") from e


_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "LA": 2, "RGB": 3, "RGBA": 4,
                  "P": 3, "PA": 4}


def dataset_modalities(root: Path, classes: list[ClassInfo], manifest: dict | None = None) -> list[ModalitySpec]:
    """The modalities of a dataset folder (rules in the module doc): those the manifest declares, in
    its order, then the other folders by name.

    Raises:
        DataError: a manifest entry is malformed, or a dense folder holds no readable image.
    """
    manifest = _read_manifest(root) if manifest is None else manifest
    declared: dict[str, ModalitySpec] = {}
    for entry in manifest.get("modalities", []):
        try:
            spec = ModalitySpec.from_toml(entry)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{root / 'manifest.json'}: modality entry {entry!r}: {e}") from e
        declared[spec.name] = spec
    specs = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "images" and not p.name.startswith("."))
    order = list(declared)
    folders.sort(key=lambda p: (order.index(p.name) if p.name in declared else len(order), p.name))
    for folder in folders:
        name = folder.name
        if name in declared:
            spec = declared[name]
        elif name == "segmentation":
            spec = ModalitySpec(name, "segmentation", len(classes), [{"name": c.name, "color": list(c.color)} for c in classes])
        elif name == "sketch":
            spec = ModalitySpec(name, "sketch", 1)
        else:
            first = next((p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES), None)
            if first is None:
                continue
            spec = ModalitySpec(name, "dense", _MODE_CHANNELS.get(open_map(first).mode, 3))
        if spec.kind == "segmentation" and not spec.classes:
            spec.classes = [{"name": c.name, "color": list(c.color)} for c in classes]
        specs.append(spec)
    return specs


#: Decoded arrays of a dataset folder, beside it, reused while no file changed (see `load_dataset`).
CACHE_NAME = ".mcm-cache.npz"
#: Bump when the decoding rules change, so that old caches are not reused.
CACHE_VERSION = 2


def _fingerprint(paths: list[Path], classes: list[ClassInfo], modalities: list[ModalitySpec]) -> str:
    """Hash of every file's name, size and modification time, of the palette and the modalities."""
    h = hashlib.sha1(repr((CACHE_VERSION, [(c.name, tuple(c.color)) for c in classes],
                           [m.to_toml() for m in modalities])).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_cache(root: Path, key: str, modalities: list[ModalitySpec], classes: list[ClassInfo]) -> Dataset | None:
    try:
        with np.load(root / CACHE_NAME, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return Dataset(images=z["images"].astype(np.float32) / 127.5 - 1.0,
                           maps={m.name: z[f"map.{m.name}"] for m in modalities},
                           modalities=modalities, classes=classes, stems=[str(x) for x in z["stems"]])
    except (OSError, KeyError, ValueError):
        return None


def _write_cache(root: Path, key: str, ds: Dataset, images_u8: np.ndarray) -> None:
    """Best effort: a read-only dataset folder just is not cached."""
    tmp = root / f".mcm-cache.{os.getpid()}.tmp.npz"
    try:
        np.savez(tmp, key=np.array(key), images=images_u8, stems=np.array(ds.stems),
                 **{f"map.{name}": arr for name, arr in ds.maps.items()})
        tmp.replace(root / CACHE_NAME)
    except OSError:
        tmp.unlink(missing_ok=True)


def _open_sized(path: Path, size: int) -> Image.Image:
    try:
        img = open_map(path)
    except MapError as e:
        raise DataError(str(e)) from e
    if img.size != (size, size):
        raise DataError(f"{path}: size {img.size[0]}x{img.size[1]}, expected {size}x{size} like the images")
    return img


def _pair(folder: Path, image_path: Path) -> Path:
    for ext in (*IMAGE_SUFFIXES, image_path.suffix):
        cand = folder / (image_path.stem + ext)
        if cand.exists():
            return cand
    raise DataError(f"{folder}: no map for {image_path.name} (files are paired by stem)")


def load_dataset(root: Path, classes: list[ClassInfo] | None = None, limit: int | None = None) -> Dataset:
    """Load a dataset folder (layout in the module doc) into memory. All images must be square and
    of one size. `classes` defaults to the manifest's list, else config/classes.toml.

    Decoding a few thousand PNGs and matching palette colours takes tens of seconds, so the arrays
    are kept in `DIR/.mcm-cache.npz` (images as uint8) and reused while no file's name, size or
    modification time, the palette and the modalities are unchanged: a resumed run loads in a second.

    Raises:
        DataError: the folder has no images, sizes differ, or a map cannot be read (the message
            names the map file and, where one is to blame, the pixel).
    """
    root = Path(root)
    manifest = _read_manifest(root)
    classes = classes if classes is not None else _dataset_classes(root, manifest)
    paths = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise DataError(f"{root}/images: no PNG or JPEG images")
    modalities = dataset_modalities(root, classes, manifest)
    files = paths + [_pair(root / m.name, p) for m in modalities for p in paths]
    key = _fingerprint(files, classes, modalities)
    cached = _read_cache(root, key, modalities, classes)
    if cached is not None:
        return cached
    try:
        first = open_map(paths[0])
    except MapError as e:
        raise DataError(str(e)) from e
    if first.size[0] != first.size[1]:
        raise DataError(f"{paths[0]}: images must be square, got {first.size[0]}x{first.size[1]}")
    size = first.size[0]
    images = [np.asarray(_open_sized(p, size).convert("RGB"), np.uint8) for p in paths]
    maps = {}
    for m in modalities:
        arrays = []
        for p in paths:
            map_path = _pair(root / m.name, p)
            try:
                arrays.append(map_from_image(_open_sized(map_path, size), m, map_path))
            except MapError as e:
                raise DataError(str(e)) from e
        maps[m.name] = np.stack(arrays)
    images_u8 = np.stack(images).transpose(0, 3, 1, 2).copy()
    ds = Dataset(images=images_u8.astype(np.float32) / 127.5 - 1.0, maps=maps, modalities=modalities,
                 classes=classes, stems=[p.stem for p in paths])
    _write_cache(root, key, ds, images_u8)
    return ds
