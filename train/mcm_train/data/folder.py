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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..contract.modalities import ClassInfo, ModalitySpec
from .classes import DataError, load_classes
from .preprocess import image_channels, map_from_image, open_map

#: Image file suffixes a dataset folder may hold.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")







# --------------------------------------------------------------------------------------------
# Procedural scenes
# --------------------------------------------------------------------------------------------


















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
            spec = ModalitySpec(name, "dense", image_channels(open_map(first)))
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
    img = open_map(path)
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
    first = open_map(paths[0])
    if first.size[0] != first.size[1]:
        raise DataError(f"{paths[0]}: images must be square, got {first.size[0]}x{first.size[1]}")
    size = first.size[0]
    images = [np.asarray(_open_sized(p, size).convert("RGB"), np.uint8) for p in paths]
    maps = {}
    for m in modalities:
        arrays = []
        for p in paths:
            map_path = _pair(root / m.name, p)
            arrays.append(map_from_image(_open_sized(map_path, size), m, map_path))
        maps[m.name] = np.stack(arrays)
    images_u8 = np.stack(images).transpose(0, 3, 1, 2).copy()
    ds = Dataset(images=images_u8.astype(np.float32) / 127.5 - 1.0, maps=maps, modalities=modalities,
                 classes=classes, stems=[p.stem for p in paths])
    _write_cache(root, key, ds, images_u8)
    return ds
