from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcm_train.cli import main
from mcm_train.contract.modalities import ModalitySpec, build_cond, cond_channels
from mcm_train.contract.model_toml import read_model_toml
from mcm_train.contract.schedule import ScheduleConfig
from mcm_train.data.folder import load_dataset
from mcm_train.export.onnx import export_base
from mcm_train.nets.mcm import MCM
from mcm_train.nets.unet import UNet, UNetConfig
from mcm_train.training.batches import Batches, conditioned_batch
from mcm_train.training.frozen import onnx_base_fn, torch_base_fn
from mcm_train.training.loop import TrainConfig, resolve_device
from mcm_train.training.trainers import pretrain_base, train_mcm

SMALL = UNetConfig(channels=(8, 16), num_res_blocks=1, attention_resolutions=(8,), image_size=16, groups=4)
MODALITIES = [ModalitySpec("segmentation", "segmentation", 8), ModalitySpec("sketch", "sketch", 1)]


def test_base_training_checkpoints_and_resumes(scenes: Path, tmp_path: Path) -> None:
    ds = load_dataset(scenes)
    tc = TrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    first = pretrain_base(ds, UNet(SMALL), ScheduleConfig(), tc, tmp_path)
    assert first.done and first.steps == 4
    assert (tmp_path / "base.pt").exists() and (tmp_path / "base_loss.png").exists()
    tc.steps = 6
    resumed = pretrain_base(ds, UNet(SMALL), ScheduleConfig(), tc, tmp_path)
    assert resumed.steps == 6
    rows = (tmp_path / "base_loss.csv").read_text().strip().splitlines()
    assert rows[0] == "step,loss,wall_s" and [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]


def test_mcm_training_never_touches_the_base(scenes: Path, tmp_path: Path) -> None:
    ds = load_dataset(scenes)
    base = UNet(SMALL).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    mcm = MCM(3, cond_channels(MODALITIES), SMALL)
    result = train_mcm(ds, mcm, torch_base_fn(base), MODALITIES, ScheduleConfig(),
                       TrainConfig(steps=3, batch_size=4, lr=1e-3), tmp_path)
    assert result.done
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(p.grad is None for p in base.parameters())
    # The MCM itself did learn: its zero-initialised output conv moved.
    assert mcm.net.conv_out.weight.abs().sum() > 0


def test_onnx_base_is_a_drop_in_black_box(tmp_path: Path) -> None:
    base = UNet(SMALL).eval()
    export_base(base, tmp_path)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1.0, 400.0, 999.0])
    with torch.no_grad():
        assert torch.allclose(onnx_base_fn(tmp_path / "base.onnx")(x, t), base(x, t), atol=1e-4)


def test_cond_layout_and_dropout() -> None:
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, :, 2:] = 3
    sketch = torch.ones(2, 1, 4, 4)
    present = torch.tensor([[True, True], [False, True]])
    cond = build_cond(MODALITIES, {"segmentation": labels, "sketch": sketch}, present)
    assert cond.shape == (2, 11, 4, 4)
    assert cond[0, 3, 0, 2] == 1 and cond[0, 0, 0, 0] == 1 and cond[0, 8].min() == 1  # one-hot + presence
    assert cond[1, :9].abs().sum() == 0  # dropped segmentation: maps and presence zero
    assert cond[1, 9].min() == 1 and cond[1, 10].min() == 1  # sketch present


def test_device_defaults_to_cuda_only_where_pytorch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="--device cuda: PyTorch sees no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda" and resolve_device("cpu") == "cpu"


def test_cli_refuses_cuda_without_a_gpu(scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # the run directory goes under runs/ of the working directory
    with pytest.raises(SystemExit) as stop:
        main(["pretrain-base", "--data", str(scenes), "--out", str(tmp_path / "m"), "--steps", "1", "--device", "cuda"])
    assert stop.value.code == 2
    assert "mcm-train: error: --device cuda: PyTorch sees no CUDA device" in capsys.readouterr().err


def test_batches_are_drawn_on_the_cpu_and_moved_to_the_device(scenes: Path) -> None:
    """The step's CPU generator decides the batch (same values for a seed everywhere); only the
    result moves (`meta` stands in for a GPU here)."""
    ds = load_dataset(scenes)

    def draw(device: str) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(5)
        return conditioned_batch(Batches(ds), torch.linspace(0.99, 0.01, 1000), 1000, ds.modalities, 4, 0.3, gen, device)

    for a, again, moved in zip(draw("cpu"), draw("cpu"), draw("meta"), strict=True):
        if a is None:  # the text embeddings of a text-conditional base: none here
            assert again is None and moved is None
            continue
        assert torch.equal(a, again)
        assert moved.device.type == "meta" and moved.shape == a.shape and moved.dtype == a.dtype


def test_mcm_trains_on_a_v_prediction_base(scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distilled (v-predicting) base is a black box like any other: its output is read whatever
    its name and converted to eps before the modulated loss."""
    monkeypatch.chdir(tmp_path)
    from mcm_train.data.classes import load_classes
    from mcm_train.export.random_models import write_random_model

    base = tmp_path / "v"
    write_random_model(base, [{"name": c.name, "color": list(c.color)} for c in load_classes()], "tiny",
                       distilled="v_prediction")
    main(["mcm", "--base", str(base), "--data", str(scenes), "--modalities", "segmentation", "--out",
          str(tmp_path / "out"), "--channels", "8,16", "--attention", "8", "--steps", "2", "--batch-size", "2"])
    doc = read_model_toml(tmp_path / "out")
    assert doc["schedule"]["prediction_type"] == "v_prediction" and doc["schedule"]["timesteps"] == [999, 562, 249, 62]
    assert doc["mcm"]["steps"] == 2
