"""The ControlNet-style baseline (mcm_train.nets.controlnet, training.controlnet), its export in the MCM contract, the
`controlnet` command and the `cost` measurement, on a tiny random base."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from mcm_train.cli import main
from mcm_train.contract.modalities import ModalitySpec, cond_channels
from mcm_train.contract.model_toml import update_model_toml
from mcm_train.contract.schedule import ScheduleConfig
from mcm_train.data.folder import load_dataset
from mcm_train.export.onnx import export_base, export_controlnet
from mcm_train.nets.controlnet import ControlNet, ControlNetMCM
from mcm_train.nets.unet import UNet, UNetConfig, count_parameters
from mcm_train.training.controlnet import train_controlnet
from mcm_train.training.loop import TrainConfig

SMALL = UNetConfig(channels=(8, 16), num_res_blocks=1, attention_resolutions=(8,), image_size=16, groups=4)
MODALITIES = [ModalitySpec("segmentation", "segmentation", 8), ModalitySpec("sketch", "sketch", 1)]
K = cond_channels(MODALITIES)


def _inputs(b: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(b, 3, 16, 16, generator=gen)
    cond = (torch.rand(b, K, 16, 16, generator=gen) < 0.3).float()
    return x, cond, torch.tensor([3.0, 870.0][:b])


def _base() -> UNet:
    torch.manual_seed(0)
    return UNet(SMALL).eval()


def _wake_zero_convs(net: ControlNet) -> None:
    """Give the zero-initialised convs random weights (as after some training)."""
    torch.manual_seed(1)
    for conv in [*net.zero_skips, net.zero_mid, net.hint[-1]]:
        nn.init.normal_(conv.weight, std=0.1)


def test_a_base_that_folds_space_into_depth_is_refused() -> None:
    base = UNet(UNetConfig(**{**SMALL.to_dict(), "attention_resolutions": (), "space_to_depth": 2}))
    with pytest.raises(ValueError, match="space_to_depth"):
        ControlNet(base, K)


def test_zero_init_gives_the_base_eps_exactly() -> None:
    base = _base()
    x, cond, t = _inputs()
    with torch.no_grad():
        want = base(x, t)
    net = ControlNet(base, K)
    assert torch.equal(net(x, cond, t), want)
    # The copy starts from the base's encoder weights.
    assert torch.equal(net.control.conv_in.weight, base.conv_in.weight) and not hasattr(net.control, "up")


def test_gradients_reach_the_copy_through_the_frozen_decoder() -> None:
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    net = ControlNet(base, K).train()
    assert not base.training and all(not p.requires_grad for p in base.parameters())
    assert count_parameters(net) == count_parameters(net.control) + count_parameters(net.hint) + \
        count_parameters(net.zero_skips) + count_parameters(net.zero_mid)
    x, cond, t = _inputs()
    # Step 0: only the zero convs get gradient (everything behind them is multiplied by zero weights).
    net(x, cond, t).square().mean().backward()
    assert net.zero_mid.weight.grad.abs().sum() > 0 and all(z.weight.grad.abs().sum() > 0 for z in net.zero_skips)
    assert net.control.conv_in.weight.grad.abs().sum() == 0
    # Once the zero convs are non-zero the loss backpropagates through the base's decoder into the copy
    # and the hint block, while the base gets no gradient and keeps its weights.
    net.zero_grad(set_to_none=True)
    _wake_zero_convs(net)
    net(x, cond, t).square().mean().backward()
    assert net.control.conv_in.weight.grad.abs().sum() > 0 and net.control.temb_mlp[0].weight.grad.abs().sum() > 0
    assert net.hint[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in base.parameters())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_training_moves_only_the_trainable_parts(scenes: Path, tmp_path: Path) -> None:
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    net = ControlNet(base, K)
    result = train_controlnet(load_dataset(scenes), net, MODALITIES, ScheduleConfig(),
                              TrainConfig(steps=2, batch_size=2, lr=1e-3), tmp_path)
    assert result.done and (tmp_path / "controlnet.pt").exists()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert net.zero_mid.weight.abs().sum() > 0
    assert count_parameters(result.model) == count_parameters(net)  # the EMA copy keeps the base frozen


def test_export_gives_gamma_zero_and_beta_the_controlnet_correction(tmp_path: Path) -> None:
    net = ControlNet(_base(), K)
    _wake_zero_convs(net)
    net.eval()
    export_controlnet(net, tmp_path)
    x, cond, t = _inputs()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    session = ort.InferenceSession(str(tmp_path / "mcm.onnx"), providers=["CPUExecutionProvider"])
    gamma, beta = session.run(["gamma", "beta"], {"sample": x.numpy(), "eps": eps.numpy(), "cond": cond.numpy(),
                                                  "timestep": t.numpy()})
    with torch.no_grad():
        eps_cn = net(x, cond, t)
        eps_base = net.base(x, t)
    assert np.all(gamma == 0)
    assert np.abs(beta - (eps_cn - eps).numpy()).max() < 1e-4
    assert (eps_cn - eps_base).abs().max() > 1e-3  # the correction is not trivially zero
    # The device's eps * (1 + gamma) + beta is the ControlNet's eps.
    assert np.abs(eps.numpy() * (1 + gamma) + beta - eps_cn.numpy()).max() < 1e-4
    vec = np.load(tmp_path / "test_vectors" / "mcm.beta.npy")
    inputs = {n: np.load(tmp_path / "test_vectors" / f"mcm.{n}.npy") for n in ("sample", "eps", "cond", "timestep")}
    assert np.abs(session.run(["beta"], inputs)[0] - vec).max() < 1e-4
    assert isinstance(ControlNetMCM(net).net, ControlNet)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random base as `pretrain-base` leaves it: (model dir, run dir)."""
    root = tmp_path_factory.mktemp("base")
    model, run = root / "model", root / "run"
    base = _base()
    export_base(base, model)
    (model / "segmenter.onnx").write_bytes(b"stand-in")
    update_model_toml(model, image={"size": 16, "channels": 3, "value_range": [-1.0, 1.0]},
                      schedule=ScheduleConfig().to_dict(), base={"file": "base.onnx", "parameters": count_parameters(base)},
                      segmenter={"file": "segmenter.onnx"})
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"unet": SMALL.to_dict(), "schedule": ScheduleConfig().to_dict()}))
    torch.save({"ema": {"module." + k: v for k, v in base.state_dict().items()}}, run / "base.pt")
    return model, run


def test_controlnet_command_exports_a_device_model(scenes: Path, tmp_path: Path, base_model: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, run = base_model
    out = tmp_path / "cn"
    main(["controlnet", "--base", str(model), "--base-run", str(run), "--data", str(scenes), "--out", str(out),
          "--run-dir", str(tmp_path / "r"), "--steps", "2", "--batch-size", "2"])
    doc = tomllib.loads((out / "model.toml").read_text())
    # every modality of the dataset by default: segmentation (8 + 1), sketch (1 + 1), depth (1 + 1)
    assert doc["mcm"]["method"] == "controlnet" and doc["mcm"]["cond_channels"] == 13 and doc["mcm"]["steps"] == 2
    assert [m["name"] for m in doc["modalities"]] == ["segmentation", "sketch", "depth"]
    assert doc["mcm"]["parameters"] > 0 and doc["base"]["file"] == "base.onnx"
    assert (out / "base.onnx").exists() and (out / "mcm.onnx").exists() and (out / "test_vectors" / "mcm.beta.npy").exists()
    # It carries the other nets of --base too: `mcm-edge eval` needs the segmenter.
    assert doc["segmenter"]["file"] == "segmenter.onnx" and (out / "segmenter.onnx").read_bytes() == b"stand-in"
    assert np.all(np.load(out / "test_vectors" / "mcm.gamma.npy") == 0)
    with pytest.raises(SystemExit) as e:
        main(["controlnet", "--base", str(model), "--base-run", str(run), "--data", str(scenes), "--out", str(model)])
    assert e.value.code == 2 and "mcm-train: error: --out must differ" in capsys.readouterr().err


def test_budget_final_exports_when_the_budget_ends_training(scenes: Path, tmp_path: Path,
                                                           base_model: tuple[Path, Path]) -> None:
    model, run = base_model
    common = ["--base", str(model), "--data", str(scenes), "--steps", "1000", "--batch-size", "2", "--minutes", "0"]
    main(["mcm", *common, "--out", str(tmp_path / "no"), "--run-dir", str(tmp_path / "r0")])
    assert not (tmp_path / "no" / "mcm.onnx").exists()  # without the flag: stop for a resume
    main(["mcm", *common, "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r1"), "--budget-final"])
    main(["controlnet", *common, "--base-run", str(run), "--out", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r2"),
          "--budget-final"])
    for name, method in (("m", "mcm"), ("c", "controlnet")):
        doc = tomllib.loads((tmp_path / name / "model.toml").read_text())
        assert doc["mcm"]["method"] == method and doc["mcm"]["steps"] == 1
        assert doc["mcm"]["stopped_by_budget_minutes"] == 0


def test_mismatched_base_run_is_refused(scenes: Path, tmp_path: Path, base_model: tuple[Path, Path]) -> None:
    model, _ = base_model
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(7)
    (other / "config.json").write_text(json.dumps({"unet": SMALL.to_dict()}))
    torch.save({"ema": {"module." + k: v for k, v in UNet(SMALL).state_dict().items()}}, other / "base.pt")
    with pytest.raises(SystemExit):
        main(["controlnet", "--base", str(model), "--base-run", str(other), "--data", str(scenes),
              "--out", str(tmp_path / "o"), "--steps", "1"])


def test_cost_command_writes_the_report(scenes: Path, tmp_path: Path, base_model: tuple[Path, Path]) -> None:
    model, run = base_model
    path = tmp_path / "cost.json"
    main(["cost", "--base", str(model), "--base-run", str(run), "--data", str(scenes), "--batch-size", "2",
          "--steps", "2", "--warmup", "1", "--json", str(path),
          "--mcm-args", "--channels 8,16 --attention 8"])
    report = json.loads(path.read_text())
    assert report["settings"]["batch_size"] == 2 and report["settings"]["timed_steps"] == 2
    for method in ("mcm", "controlnet"):
        r = report["methods"][method]
        for key in ("seconds_per_step", "cpu_seconds_per_step", "samples_per_second", "peak_rss_mib",
                    "training_working_set_mib", "process_max_rss_mib", "trainable_parameters", "architecture"):
            assert key in r, (method, key)
        assert len(r["step_seconds"]) == 2 and len(r["runs"]) == 1
        assert r["seconds_per_step"] > 0 and r["trainable_parameters"] > 0
        assert r["peak_rss_mib"] >= r["rss_at_first_step_mib"] > 50
    assert report["methods"]["controlnet"]["frozen_parameters_in_module"] == count_parameters(_base())
    assert set(report["controlnet_over_mcm"]) >= {"seconds_per_step", "peak_rss_mib", "trainable_parameters"}


def test_cost_repeats_pool_the_steps_and_keep_the_memory_maximum() -> None:
    from mcm_train.training.cost import _combine

    def run(steps: list[float], peak: float) -> dict:
        return {"trainable_parameters": 5, "frozen_parameters_in_module": 0, "architecture": {}, "step_seconds": steps,
                "cpu_step_seconds": [s / 2 for s in steps], "seconds_per_step": 0.0, "cpu_seconds_per_step": 0.0,
                "peak_rss_mib": peak, "rss_at_first_step_mib": 100.0, "training_working_set_mib": peak - 100,
                "process_max_rss_mib": peak + 1, "load_average_before": [1.0, 1.0, 1.0]}

    r = _combine([run([1.0, 2.0, 9.0], 300.0), run([3.0, 4.0, 5.0], 200.0)], batch_size=7)
    assert r["seconds_per_step"] == 3.5 and r["cpu_seconds_per_step"] == 1.75 and r["samples_per_second"] == 2.0
    assert r["peak_rss_mib"] == 300.0 and r["training_working_set_mib"] == 200.0 and len(r["runs"]) == 2
