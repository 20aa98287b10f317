"""`mcm-train distill`: progressive distillation stages, the two-step target, a whole tiny run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mcm_train.cli import main
from mcm_train.contract.model_toml import read_model_toml
from mcm_train.contract.schedule import ScheduleConfig, alpha_bar, alpha_sigma, timestep_grid, to_x0_eps
from mcm_train.data.classes import load_classes
from mcm_train.export.random_models import write_random_model
from mcm_train.training.distill import McmTeacher, Teacher, stage_steps, teacher_x0, two_step_target


def test_stages_halve_down_to_the_target_then_on() -> None:
    assert stage_steps(32, 4, (2, 1)) == [16, 8, 4, 2, 1]
    assert stage_steps(8, 4) == [4]
    with pytest.raises(ValueError, match="does not halve"):
        stage_steps(24, 4)
    with pytest.raises(ValueError, match="each later stage halves"):
        stage_steps(16, 4, (1,))


def test_grids_are_nested_and_quadratic_keeps_snr_up() -> None:
    for n in (1, 2, 4, 8, 16):
        assert timestep_grid(n, 1000) == timestep_grid(2 * n, 1000)[::2]
    assert timestep_grid(4, 1000, "trailing") == [999, 749, 499, 249]
    # halves round up, as on the device (Python's round, to even, would give 811 and 61)
    assert timestep_grid(16, 1000, "trailing")[3] == 812 and timestep_grid(4, 1000)[3] == 62
    ab = alpha_bar(ScheduleConfig())
    snr = lambda t: float(ab[t] / (1 - ab[t]))  # noqa: E731
    assert sum(snr(t) < 0.1 for t in timestep_grid(4, 1000, "trailing")) == 3
    assert sum(snr(t) < 0.1 for t in timestep_grid(4, 1000, "quadratic")) == 2  # 999 and 562


class _Knows(nn.Module):
    """A teacher that predicts the true x_0 whatever it is given."""

    def __init__(self, x_0: torch.Tensor) -> None:
        super().__init__()
        self.x_0 = x_0

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.x_0


def test_two_step_target_of_an_exact_teacher_is_x0() -> None:
    """Two exact DDIM steps land where one exact step lands: the target is the true x_0 at every
    student step, the last one (to x_0 itself) included."""
    gen = torch.Generator().manual_seed(0)
    x_0 = torch.rand(4, 3, 8, 8, generator=gen) * 1.8 - 0.9
    ab = alpha_bar(ScheduleConfig())
    grid = torch.tensor([*timestep_grid(8, 1000), -1])
    i = torch.tensor([0, 1, 2, 3])
    t, t_mid, t_next = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    a = ab[t].sqrt().view(-1, 1, 1, 1).float()
    x_t = a * x_0 + (1 - a**2).sqrt() * torch.randn(x_0.shape, generator=gen)
    target = two_step_target(teacher_x0(Teacher(_Knows(x_0), "sample"), ab), x_t, t, t_mid, t_next, ab)
    assert torch.allclose(target, x_0, atol=2e-4), float((target - x_0).abs().max())


def test_cli_distills_a_tiny_base_into_4_and_2_steps(scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    teacher = tmp_path / "teacher"
    main(["pretrain-base", "--data", str(scenes), "--out", str(teacher), "--steps", "2", "--batch-size", "2",
          "--channels", "8,16", "--attention", "8"])
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(teacher), "--data", str(scenes), "--out", str(out), "--from-steps", "8",
            "--sample-steps", "4", "--then", "2", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "1"]
    main(args)
    doc = read_model_toml(out)
    assert doc["schedule"]["prediction_type"] == "v_prediction"
    assert doc["schedule"]["timesteps"] == [999, 562, 249, 62]  # what the device samples with
    assert doc["base"]["distillation"]["spacing"] == "quadratic"
    assert doc["base"]["distillation"]["stages"] == [4] and doc["base"]["distillation"]["teacher"] == str(teacher)
    assert read_model_toml(tmp_path / "student-2steps")["base"]["distillation"]["stages"] == [4, 2]
    # base.onnx names its output after the prediction and reproduces its test vectors
    assert [o.name for o in onnx.load(str(out / "base.onnx")).graph.output] == ["v"]
    vec = {n: np.load(out / "test_vectors" / f"base.{n}.npy") for n in ("sample", "timestep", "v")}
    got = ort.InferenceSession(str(out / "base.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"sample": vec["sample"], "timestep": vec["timestep"]})[0]
    np.testing.assert_allclose(got, vec["v"], atol=1e-4)
    # the output is a prediction, not the input passed through; a second run resumes every stage
    assert not np.allclose(vec["sample"], vec["v"])
    assert len(list((tmp_path / "runs").glob("*student/distill/student2.pt"))) == 1
    main(args)


def test_every_prediction_type_gives_back_x0_and_eps() -> None:
    gen = torch.Generator().manual_seed(1)
    x_0, eps = torch.rand(2, 3, 4, 4, generator=gen) * 2 - 1, torch.randn(2, 3, 4, 4, generator=gen)
    ab = alpha_bar(ScheduleConfig())
    alpha, sigma = alpha_sigma(ab, torch.tensor([10, 990]), x_0)
    x_t = alpha * x_0 + sigma * eps
    for kind, prediction in (("epsilon", eps), ("v_prediction", alpha * eps - sigma * x_0), ("sample", x_0)):
        got_x0, got_eps = to_x0_eps(prediction, x_t, alpha, sigma, kind)
        assert torch.allclose(got_eps, eps, atol=1e-3) and torch.allclose(got_x0, x_0, atol=1e-3), kind
    with pytest.raises(ValueError, match="prediction_type 'eps'"):
        to_x0_eps(eps, x_t, alpha, sigma, "eps")


def test_a_diffusers_unet_distills_too(tmp_path: Path, scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DModel

    from mcm_train.export.diffusers import export_diffusers

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    export_diffusers(tmp_path / "pipe", tmp_path / "imported")
    base = ["distill", "--teacher", str(tmp_path / "imported"), "--data", str(scenes), "--out", str(tmp_path / "s"),
            "--from-steps", "4", "--sample-steps", "2", "--steps", "1", "--batch-size", "2"]
    with pytest.raises(SystemExit):  # the imported model dir alone has no PyTorch weights
        main(base)
    main([*base, "--teacher-diffusers", str(tmp_path / "pipe")])
    doc = read_model_toml(tmp_path / "s")
    assert doc["schedule"]["timesteps"] == [999, 249] and doc["base"]["distillation"]["teacher_diffusers"]
    vec = {n: np.load(tmp_path / "s" / "test_vectors" / f"base.{n}.npy") for n in ("sample", "timestep", "v")}
    got = ort.InferenceSession(str(tmp_path / "s" / "base.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"sample": vec["sample"], "timestep": vec["timestep"]})[0]
    np.testing.assert_allclose(got, vec["v"], atol=1e-4)


def test_a_teacher_with_a_silent_mcm_gives_its_base_s_target() -> None:
    """gamma = beta = 0: the conditioned teacher is its base (v-prediction), whatever the cond."""
    gen = torch.Generator().manual_seed(2)
    ab = alpha_bar(ScheduleConfig())
    base = lambda x, t: 0.5 * x + 0.01 * t.view(-1, 1, 1, 1) / 1000  # noqa: E731
    zero = lambda x, eps, cond, t: (torch.zeros_like(x), torch.zeros_like(x))  # noqa: E731
    x_t, cond = torch.randn(2, 3, 4, 4, generator=gen), torch.ones(2, 5, 4, 4)
    t, t_mid, t_next = torch.tensor([999, 249]), torch.tensor([811, 140]), torch.tensor([562, 62])
    plain = two_step_target(teacher_x0(Teacher(base, "v_prediction"), ab), x_t, t, t_mid, t_next, ab)
    conditioned = McmTeacher(base, "v_prediction", zero).x0_fn(cond, ab)
    assert torch.allclose(two_step_target(conditioned, x_t, t, t_mid, t_next, ab), plain, atol=1e-5)


def test_cli_trains_the_student_s_mcm_from_two_conditioned_teacher_steps(scenes: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    write_random_model(teacher, [{"name": c.name, "color": list(c.color)} for c in load_classes()], "tiny")
    main(["distill", "--teacher", str(teacher), "--data", str(scenes), "--out", str(student), "--from-steps", "8",
          "--sample-steps", "4", "--steps", "1", "--batch-size", "2"])
    small = ["--data", str(scenes), "--channels", "8,16", "--attention", "8", "--steps", "2", "--batch-size", "2"]
    main(["mcm", "--base", str(student), "--distill-from", str(teacher), "--out", str(tmp_path / "taught"), *small])
    assert "two conditioned steps of" in capsys.readouterr().out
    mcm = read_model_toml(tmp_path / "taught")["mcm"]
    assert (mcm["loss"], mcm["distill_from"], mcm["steps"]) == ("distillation", str(teacher), 2)
    assert (tmp_path / "taught" / "mcm.onnx").exists()
    # the plain loss on a distilled base draws its timesteps from the base's grid
    main(["mcm", "--base", str(student), "--out", str(tmp_path / "plain"), *small])
    assert read_model_toml(tmp_path / "plain")["mcm"]["timesteps"] == "grid"
    # refused: a base that is not distilled; a teacher with other modalities
    for base, extra, message in ((teacher, [], "needs a distilled base"),
                                 (student, ["--modalities", "segmentation,sketch"], "the teacher needs the same cond")):
        with pytest.raises(SystemExit):
            main(["mcm", "--base", str(base), "--distill-from", str(teacher), "--out", str(tmp_path / "no"), *small,
                  *extra])
        assert message in capsys.readouterr().err
