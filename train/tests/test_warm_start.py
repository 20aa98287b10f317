"""`--init-from`: a new MCM starts as an exported one, new modalities at zero; a segmenter continues
or is written again with the `features` output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mcm_train.cli import main
from mcm_train.contract.modalities import ModalitySpec, cond_channels
from mcm_train.contract.model_toml import modalities_from_toml, read_model_toml, update_model_toml
from mcm_train.data.classes import load_classes
from mcm_train.export.onnx import export_image_net
from mcm_train.export.random_models import PRESETS, write_random_model
from mcm_train.nets.mcm import MCM
from mcm_train.nets.unet import UNet, UNetConfig
from mcm_train.training.warm_start import WarmStartError, warm_start


def _model(tmp_path: Path, preset: str) -> Path:
    write_random_model(tmp_path, [{"name": c.name, "color": list(c.color)} for c in load_classes()], preset)
    return tmp_path


def _slices(modalities: list[ModalitySpec]) -> dict[str, slice]:
    out, pos = {}, 0
    for m in modalities:
        out[m.name] = slice(pos, pos + m.width)
        pos += m.width
    return out


@pytest.mark.parametrize("preset", ["tiny", "tiny-s2d"])
def test_new_modality_starts_at_zero_and_old_ones_keep_their_weights(tmp_path: Path, preset: str) -> None:
    model = _model(tmp_path, preset)
    old = modalities_from_toml(read_model_toml(model))
    by_name = {m.name: m for m in old}
    # another order, one modality left out, one added (3-channel normals)
    new = [by_name["depth"], ModalitySpec("normals", "dense", 3, value_range=(-1.0, 1.0)), by_name["segmentation"]]
    p = PRESETS[preset]
    mcm = MCM(p["channels"], cond_channels(new), UNetConfig(image_size=p["size"], **p["mcm"])).eval()
    kept, added = warm_start(mcm, new, model)
    assert (kept, added) == (["depth", "segmentation"], ["normals"])

    vec = {n: np.load(model / "test_vectors" / f"mcm.{n}.npy") for n in ("sample", "eps", "cond", "timestep")}
    # the old cond with sketch absent, and the same maps laid out for the new MCM, normals given (random)
    old_cond = vec["cond"].copy()
    old_at, new_at = _slices(old), _slices(new)
    old_cond[:, old_at["sketch"]] = 0.0
    new_cond = np.random.default_rng(0).random((2, cond_channels(new), p["size"], p["size"])).astype(np.float32)
    for name in kept:
        new_cond[:, new_at[name]] = old_cond[:, old_at[name]]
    sess = ort.InferenceSession(str(model / "mcm.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(None, {**vec, "cond": old_cond})
    with torch.no_grad():
        got = mcm(*(torch.from_numpy(v) for v in (vec["sample"], vec["eps"], new_cond, vec["timestep"])))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-5)


def test_another_architecture_or_a_controlnet_is_refused(tmp_path: Path) -> None:
    model = _model(tmp_path, "tiny")
    mods = modalities_from_toml(read_model_toml(model))
    wider = MCM(3, cond_channels(mods), UNetConfig(image_size=16, **{**PRESETS["tiny"]["mcm"], "channels": (8, 32)}))
    with pytest.raises(WarmStartError, match=r"mcm.onnx: net\..* is \[.*\], this net's is \[.*\]"):
        warm_start(wider, mods, model)
    toml = (model / "model.toml").read_text().replace('[mcm]\n', '[mcm]\nmethod = "controlnet"\n')
    (model / "model.toml").write_text(toml)
    with pytest.raises(WarmStartError, match="needs a model directory with an MCM"):
        warm_start(wider, mods, model)


def test_cli_adds_depth_to_a_trained_mcm(scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = _model(tmp_path / "base", "tiny")
    small = ["--data", str(scenes), "--channels", "8,16", "--attention", "8", "--steps", "2", "--batch-size", "2"]
    main(["mcm", "--base", str(base), "--modalities", "segmentation,sketch", "--out", str(tmp_path / "a"), *small])
    # the base's depth estimator is not carried into a model without depth ...
    assert "estimators" not in read_model_toml(tmp_path / "a")
    main(["mcm", "--base", str(base), "--modalities", "segmentation,sketch,depth", "--out",
          str(tmp_path / "b"), "--init-from", str(tmp_path / "a"), *small])
    assert "weights of segmentation, sketch copied, depth starting at zero" in capsys.readouterr().out
    doc = read_model_toml(tmp_path / "b")
    assert doc["mcm"]["init_from"] == str(tmp_path / "a")  # as given, like the dataset
    assert [m["name"] for m in doc["modalities"]] == ["segmentation", "sketch", "depth"]
    # ... and is carried, with its test vectors, into one with depth
    assert doc["estimators"]["depth"]["file"] == "depth_estimator.onnx"
    assert (tmp_path / "b" / "depth_estimator.onnx").exists()
    assert (tmp_path / "b" / "test_vectors" / "depth_estimator.map.npy").exists()


def test_reference_nets_written_again_keep_their_outputs_and_record(scenes: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = _model(tmp_path / "m", "tiny")
    # an older segmenter.onnx: logits only, no `features` in model.toml
    seg = UNet(UNetConfig.from_dict(read_model_toml(model)["segmenter"]["architecture"])).eval()
    export_image_net(seg, "segmenter", "logits", model)
    update_model_toml(model, segmenter={"file": "segmenter.onnx", "architecture": seg.cfg.to_dict(), "steps": 400,
                                        "dataset": "old-data"})
    out = tmp_path / "again"
    main(["segmenter", "--data", str(scenes), "--init-from", str(model), "--steps", "0", "--out", str(out)])
    section = read_model_toml(out)["segmenter"]
    assert (section["features"], section["steps"], section["dataset"]) == (seg.cfg.channels[-1], 400, "old-data")
    image = np.load(model / "test_vectors" / "segmenter.image.npy")
    old = ort.InferenceSession(str(model / "segmenter.onnx")).run(None, {"image": image})
    new = ort.InferenceSession(str(out / "segmenter.onnx")).run(None, {"image": image})
    assert len(old) == 1 and len(new) == 2 and np.abs(old[0] - new[0]).max() < 1e-5
    assert new[1].shape == (image.shape[0], seg.cfg.channels[-1], 1, 1)
    # the depth estimator too
    main(["estimator", "--data", str(scenes), "--init-from", str(model), "--steps", "0", "--out", str(out)])
    est = read_model_toml(out)["estimators"]["depth"]
    assert est["file"] == "depth_estimator.onnx" and est["dataset"] == "none (random weights)"
    image = np.load(model / "test_vectors" / "depth_estimator.image.npy")
    old, new = (ort.InferenceSession(str(d / "depth_estimator.onnx")).run(None, {"image": image}) for d in (model, out))
    assert np.abs(old[0] - new[0]).max() < 1e-5
    # trained further, it records this run and where it started
    main(["segmenter", "--data", str(scenes), "--init-from", str(out), "--steps", "2", "--batch-size", "2", "--out",
          str(tmp_path / "more")])
    section = read_model_toml(tmp_path / "more")["segmenter"]
    assert (section["steps"], section["init_from"]) == (2, str(out.resolve()))
