from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcm_train.data.classes import DataError, load_classes
from mcm_train.data.folder import CACHE_NAME, load_dataset
from mcm_train.data.preprocess import palette_array, strokes_from_image
from mcm_train.data.scenes import scene_layers, write_scenes


def test_scenes_are_deterministic_and_varied(tmp_path: Path) -> None:
    classes = load_classes()
    write_scenes(tmp_path / "a", 6, 32, 5, classes)
    write_scenes(tmp_path / "b", 6, 32, 5, classes)
    for sub in ("images", "segmentation", "sketch", "depth"):
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
        seen |= set(np.unique(scene_layers(np.random.default_rng([0, i]), 32, len(classes))[0]).tolist())
    assert len(classes) >= 6 and len(seen) >= 6


def test_segmentation_pngs_hold_exact_palette_colours(scenes: Path) -> None:
    palette = {tuple(c) for c in palette_array(load_classes())}
    seg = np.asarray(Image.open(scenes / "segmentation" / "00000.png").convert("RGB"))
    assert {tuple(p) for p in seg.reshape(-1, 3)} <= palette


def test_loader_reads_maps_back(scenes: Path) -> None:
    ds = load_dataset(scenes)
    assert ds.images.shape == (12, 3, 16, 16) and ds.images.min() >= -1 and ds.images.max() <= 1
    assert [(m.name, m.kind, m.channels) for m in ds.modalities] == [
        ("segmentation", "segmentation", 8), ("sketch", "sketch", 1), ("depth", "dense", 1)]
    seg, sketch, depth = ds.maps["segmentation"], ds.maps["sketch"], ds.maps["depth"]
    assert seg.shape == (12, 16, 16) and seg.max() < len(ds.classes)
    assert sketch.shape == (12, 1, 16, 16) and 0 < sketch.mean() < 0.5
    assert depth.shape == (12, 1, 16, 16) and depth.dtype == np.float32 and 0 <= depth.min() and depth.max() <= 1


def test_loader_accepts_single_channel_ids_and_brushed_maps_and_refuses_photos(tmp_path: Path, scenes: Path) -> None:
    for sub in ("images", "segmentation"):
        (tmp_path / sub).mkdir()
    Image.open(scenes / "images" / "00000.png").save(tmp_path / "images" / "x.png")
    ids = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16) % 8
    Image.fromarray(ids, mode="L").save(tmp_path / "segmentation" / "x.png")
    assert np.array_equal(load_dataset(tmp_path).maps["segmentation"][0], ids)
    # A far pixel (a brush's edge) takes the class of its neighbourhood.
    brushed = np.full((16, 16, 3), tuple(load_classes()[0].color), np.uint8)
    brushed[5, 9] = [200, 0, 200]
    Image.fromarray(brushed).save(tmp_path / "segmentation" / "x.png")
    assert (load_dataset(tmp_path).maps["segmentation"][0] == 0).all()
    # A photo is refused, named like the device names it: the map file (not the photo), the share.
    photo = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "segmentation" / "x.png")
    with pytest.raises(DataError, match=r"segmentation/x\.png: not a segmentation map: [0-9.]+ % of the pixels"):
        load_dataset(tmp_path)


def test_soft_brush_edges_split_in_the_middle() -> None:
    from mcm_train.data.labels import colour_labels

    palette = np.array([[50, 160, 60], [30, 80, 200], [135, 206, 235]], np.uint8)
    hard = np.where(np.arange(20)[None, :] < 10, 0, 1).repeat(6, 0)
    rgb = palette[hard].astype(np.float32)
    for x, a in ((8, 0.2), (9, 0.4), (10, 0.6), (11, 0.8)):  # a soft edge, 4 pixels wide
        rgb[:, x] = (1 - a) * palette[0] + a * palette[1]
    ids, far_share = colour_labels(np.round(rgb).astype(np.uint8), palette)
    assert 0 < far_share <= 0.2
    assert np.array_equal(ids, hard)


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
    assert np.array_equal(first.images, again.images)
    for name in first.maps:
        assert np.array_equal(first.maps[name], again.maps[name]), name
    assert again.images.dtype == np.float32 and again.stems == first.stems
    # A changed map invalidates the cache: its new content is read.
    seg = sorted((root / "segmentation").glob("*.png"))[0]
    Image.new("RGB", (first.size, first.size), tuple(first.classes[1].color)).save(seg)
    st = seg.stat()
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = load_dataset(root)
    assert (changed.maps["segmentation"][0] == 1).all()
    assert not np.array_equal(changed.maps["segmentation"], first.maps["segmentation"])
