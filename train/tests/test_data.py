from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcm_train.data import (
    CACHE_NAME,
    DataError,
    load_classes,
    load_dataset,
    palette_array,
    scene_labels,
    strokes_from_image,
    write_scenes,
)


def test_scenes_are_deterministic_and_varied(tmp_path: Path) -> None:
    classes = load_classes()
    write_scenes(tmp_path / "a", 6, 32, 5, classes)
    write_scenes(tmp_path / "b", 6, 32, 5, classes)
    for sub in ("images", "segmentation", "sketch"):
        for i in range(6):
            a = np.asarray(Image.open(tmp_path / "a" / sub / f"{i:05d}.png"))
            b = np.asarray(Image.open(tmp_path / "b" / sub / f"{i:05d}.png"))
            assert np.array_equal(a, b)
    imgs = [np.asarray(Image.open(tmp_path / "a" / "images" / f"{i:05d}.png")) for i in range(6)]
    assert len({im.tobytes() for im in imgs}) == 6


def test_scenes_use_at_least_six_classes() -> None:
    classes = load_classes()
    seen = set()
    for i in range(40):
        seen |= set(np.unique(scene_labels(np.random.default_rng([0, i]), 32, len(classes))).tolist())
    assert len(classes) >= 6 and len(seen) >= 6


def test_segmentation_pngs_hold_exact_palette_colours(scenes: Path) -> None:
    palette = {tuple(c) for c in palette_array(load_classes())}
    seg = np.asarray(Image.open(scenes / "segmentation" / "00000.png").convert("RGB"))
    assert {tuple(p) for p in seg.reshape(-1, 3)} <= palette


def test_loader_reads_maps_back(scenes: Path) -> None:
    ds = load_dataset(scenes)
    assert ds.images.shape == (12, 3, 16, 16) and ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.segmentation.shape == (12, 16, 16) and ds.segmentation.max() < len(ds.classes)
    assert ds.sketch.shape == (12, 1, 16, 16) and 0 < ds.sketch.mean() < 0.5


def test_loader_accepts_single_channel_ids_and_refuses_far_colours(tmp_path: Path, scenes: Path) -> None:
    for sub in ("images", "segmentation"):
        (tmp_path / sub).mkdir()
    Image.open(scenes / "images" / "00000.png").save(tmp_path / "images" / "x.png")
    ids = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16) % 8
    Image.fromarray(ids, mode="L").save(tmp_path / "segmentation" / "x.png")
    assert np.array_equal(load_dataset(tmp_path).segmentation[0], ids)
    Image.fromarray(np.full((16, 16, 3), [200, 0, 200], np.uint8)).save(tmp_path / "segmentation" / "x.png")
    with pytest.raises(DataError, match="palette"):
        load_dataset(tmp_path)


def test_sketch_polarity_and_transparency_are_detected() -> None:
    strokes = np.zeros((8, 8), bool)
    strokes[3, :] = True
    dark_on_light = Image.fromarray(np.where(strokes, 0, 255).astype(np.uint8))
    light_on_dark = Image.fromarray(np.where(strokes, 255, 0).astype(np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = np.where(strokes, 255, 0)  # black strokes on a transparent background
    for img in (dark_on_light, light_on_dark, Image.fromarray(rgba, mode="RGBA")):
        assert np.array_equal(strokes_from_image(img) > 0.5, strokes)


def test_decoded_dataset_is_cached_until_a_file_changes(scenes: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(scenes, root, ignore=shutil.ignore_patterns(CACHE_NAME))
    first = load_dataset(root)
    assert (root / CACHE_NAME).is_file()
    again = load_dataset(root)
    for name in ("images", "segmentation", "sketch"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert again.images.dtype == np.float32 and again.stems == first.stems
    # A changed map invalidates the cache: its new content is read.
    seg = sorted((root / "segmentation").glob("*.png"))[0]
    Image.new("RGB", (first.size, first.size), tuple(first.classes[1].color)).save(seg)
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = load_dataset(root)
    assert (changed.segmentation[0] == 1).all() and not np.array_equal(changed.segmentation, first.segmentation)
