from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mcm_train.cli import main
from mcm_train.data.classes import load_classes
from mcm_train.export.random_models import PRESETS, write_random_model
from mcm_train.nets.mcm import MCM
from mcm_train.nets.unet import UNet, UNetConfig


def _run(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)


@pytest.mark.parametrize("preset", ["tiny", "tiny-s2d"])
def test_tiny_model_vectors_match_onnxruntime(tmp_path: Path, preset: str) -> None:
    write_random_model(tmp_path, [{"name": c.name, "color": list(c.color)} for c in load_classes()], preset)
    vec = lambda name: np.load(tmp_path / "test_vectors" / f"{name}.npy")  # noqa: E731
    eps = _run(tmp_path / "base.onnx", {"sample": vec("base.sample"), "timestep": vec("base.timestep")})[0]
    assert np.abs(eps - vec("base.eps")).max() < 1e-4
    inputs = {n: vec(f"mcm.{n}") for n in ("sample", "eps", "cond", "timestep")}
    gamma, beta = _run(tmp_path / "mcm.onnx", inputs)
    assert np.abs(gamma - vec("mcm.gamma")).max() < 1e-4 and np.abs(beta - vec("mcm.beta")).max() < 1e-4
    assert np.abs(vec("mcm.gamma")).max() > 1e-3  # the vectors exercise a non-identity MCM
    doc = tomllib.loads((tmp_path / "model.toml").read_text())
    assert doc["mcm"]["cond_channels"] == 13 and doc["image"]["size"] == 16
    assert [m["name"] for m in doc["modalities"]] == ["segmentation", "sketch", "depth"]
    assert doc["modalities"][2] == {"name": "depth", "kind": "dense", "channels": 1, "value_range": [0.0, 1.0]}
    # Dynamic batch: a batch of 3 runs too.
    out = _run(tmp_path / "base.onnx", {"sample": np.zeros((3, 3, 16, 16), np.float32), "timestep": np.zeros(3, np.float32)})
    assert out[0].shape == (3, 3, 16, 16)


def test_cli_trains_and_exports_a_whole_model(scenes: Path, tmp_path: Path) -> None:
    out, runs = tmp_path / "model", tmp_path / "runs"
    small = ["--steps", "2", "--batch-size", "2", "--channels", "8,16", "--attention", "8"]
    main(["pretrain-base", "--data", str(scenes), "--out", str(out), "--run-dir", str(runs / "b"), *small])
    main(["mcm", "--base", str(out), "--data", str(scenes), "--out", str(out), "--run-dir", str(runs / "m"), *small])
    main(["segmenter", "--data", str(scenes), "--out", str(out), "--run-dir", str(runs / "s"), "--steps", "2",
          "--batch-size", "2", "--channels", "8,16"])
    doc = tomllib.loads((out / "model.toml").read_text())
    assert doc["base"]["steps"] == 2 and doc["mcm"]["steps"] == 2 and doc["segmenter"]["steps"] == 2
    assert doc["mcm"]["parameters"] > 0 and doc["base"]["final_loss"] > 0
    for f in ("base.onnx", "mcm.onnx", "segmenter.onnx", "test_vectors/mcm.gamma.npy"):
        assert (out / f).exists(), f
    cfg = json.loads((runs / "b" / "config.json").read_text())
    assert cfg["unet"]["channels"] == [8, 16]
    # An MCM written to a new directory carries the base it was trained on.
    out2 = tmp_path / "model2"
    main(["mcm", "--base", str(out), "--data", str(scenes), "--out", str(out2), "--run-dir", str(runs / "m2"), *small])
    doc2 = tomllib.loads((out2 / "model.toml").read_text())
    assert doc2["base"] == doc["base"] and doc2["mcm"]["steps"] == 2
    assert (out2 / "base.onnx").exists() and (out2 / "test_vectors" / "base.eps.npy").exists()


def test_export_diffusers_tiny_unet(tmp_path: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    from mcm_train.export.diffusers import export_diffusers

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=4)
    src = tmp_path / "pipe"
    unet.save_pretrained(src / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).save_pretrained(src / "scheduler")
    export_diffusers(src, tmp_path / "out")
    doc = tomllib.loads((tmp_path / "out" / "model.toml").read_text())
    assert doc["schedule"]["beta_schedule"] == "scaled_linear" and doc["image"]["size"] == 16
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 900.0])
    with torch.no_grad():
        want = unet(x, t).sample.numpy()
    got = _run(tmp_path / "out" / "base.onnx", {"sample": x.numpy(), "timestep": t.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4


def test_export_random_cli_and_paper_preset_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["export-random", "--preset", "tiny", "--out", str(tmp_path)])
    doc = tomllib.loads((tmp_path / "model.toml").read_text())
    assert doc["image"] == {"size": 16, "channels": 3, "value_range": [-1.0, 1.0]}
    assert (tmp_path / "base.onnx").is_file() and (tmp_path / "mcm.onnx").is_file()
    assert "random tiny model" in capsys.readouterr().out
    # The paper-scale pair (not exported here: 250 MB): base 50-100 M parameters, MCM 1-4 % of it.
    p = PRESETS["paper"]
    base = UNet(UNetConfig(in_channels=p["channels"], out_channels=p["channels"], image_size=p["size"], **p["base"]))
    mcm = MCM(p["channels"], 11, UNetConfig(image_size=p["size"], **p["mcm"]))
    nb, nm = (sum(q.numel() for q in m.parameters()) for m in (base, mcm))
    assert 50e6 <= nb <= 100e6 and 0.01 <= nm / nb <= 0.04, (nb, nm)


def test_parity_vectors_cover_every_modality_and_rebuild_cond(tmp_path: Path) -> None:
    from mcm_train.contract.modalities import build_cond
    from mcm_train.contract.model_toml import modalities_from_toml, read_model_toml
    from mcm_train.data.preprocess import map_from_image, open_map

    write_random_model(tmp_path, [{"name": c.name, "color": list(c.color)} for c in load_classes()], "tiny")
    vec = tmp_path / "test_vectors"
    alpha_bar = np.load(vec / "schedule.alpha_bar.npy")
    assert alpha_bar.dtype == np.float64 and alpha_bar.shape == (1000,) and np.all(np.diff(alpha_bar) < 0)
    index = json.loads((vec / "frames" / "index.json").read_text())
    modalities = modalities_from_toml(read_model_toml(tmp_path))
    assert {e["modality"] for e in index} == {m.name for m in modalities}
    assert {"palette", "grey16", "bilevel", "exif"} <= {e["case"] for e in index if e["kind"] == "segmentation"}
    for e in index:
        spec = next(m for m in modalities if m.name == e["modality"])
        again = map_from_image(open_map(vec / "frames" / e["frame"]), spec, e["frame"])
        assert np.array_equal(again, np.load(vec / "frames" / e["map"])), e
    # Every encoding of the segmentation pattern gives the same ids (EXIF: rotated back upright);
    # the soft-brush case paints another map.
    assert "soft_brush" in {e["case"] for e in index}
    same = [e for e in index if e["kind"] == "segmentation" and e["case"] not in ("bilevel", "soft_brush")]
    seg = [np.load(vec / "frames" / e["map"]) for e in same]
    assert all(np.array_equal(s, seg[0]) for s in seg)
    first = {e["modality"]: np.load(vec / "frames" / e["map"]) for e in reversed(index)}
    maps = {m.name: torch.from_numpy(first[m.name].astype(np.int64) if m.kind == "segmentation" else first[m.name])[None]
            for m in modalities}
    cond = np.load(vec / "cond.all.npy")
    assert cond.shape == (1, 13, 16, 16)
    assert np.array_equal(cond, build_cond(modalities, maps, torch.ones(1, 3, dtype=torch.bool)).numpy())
    only_first = np.load(vec / "cond.first.npy")
    assert only_first[0, 9:].max() == 0 and np.array_equal(only_first[0, :9], cond[0, :9])
