"""`mcm-train` as a new user meets it: run directories, refusals, help and error format."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest

from mcm_train.cli import build_parser, main
from mcm_train.export.random_models import write_random_model

SMALL = ["--steps", "2", "--batch-size", "2", "--channels", "8,16", "--attention", "8"]


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A random-weight 16x16 model directory (the tests' base)."""
    from mcm_train.data.classes import load_classes

    model = tmp_path / "tiny"
    write_random_model(model, [{"name": c.name, "color": list(c.color)} for c in load_classes()], "tiny")
    return model


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `argv`, expect the one error format: exit status 2 and `mcm-train: error: ...` on stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err
    return err


def test_runs_into_two_outputs_do_not_share_checkpoints(scenes: Path, tiny: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    main(["mcm", "--base", str(tiny), "--data", str(scenes), "--out", "out/a", "--modalities", "segmentation", *SMALL])
    main(["mcm", "--base", str(tiny), "--data", str(scenes), "--out", "out/b", "--modalities", "sketch", *SMALL])
    assert "resumed" not in capsys.readouterr().out
    assert (tmp_path / "runs/out-a/mcm/mcm.pt").is_file() and (tmp_path / "runs/out-b/mcm/mcm.pt").is_file()
    names = lambda out: [m["name"] for m in tomllib.loads((tmp_path / out / "model.toml").read_text())["modalities"]]  # noqa: E731
    assert names("out/a") == ["segmentation"] and names("out/b") == ["sketch"]
    # The same run again resumes (and trains no further: its 2 steps are done).
    main(["mcm", "--base", str(tiny), "--data", str(scenes), "--out", "out/a", "--modalities", "segmentation", *SMALL])
    assert "resumed" in capsys.readouterr().out


def test_a_checkpoint_of_another_configuration_is_refused(scenes: Path, tiny: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = ["--run-dir", str(tmp_path / "run")]
    main(["mcm", "--base", str(tiny), "--data", str(scenes), "--out", str(tmp_path / "a"), *run, *SMALL])
    err = _error(capsys, ["mcm", "--base", str(tiny), "--data", str(scenes), "--out", str(tmp_path / "a"), *run,
                          "--modalities", "segmentation,sketch", *SMALL])
    assert "belongs to another run" in err and "modalities" in err and "--run-dir" in err


def test_an_existing_model_keeps_its_base_unless_overwrite(scenes: Path, tiny: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["pretrain-base", "--data", str(scenes), "--out", str(tiny), "--run-dir", str(tmp_path / "b"), *SMALL]
    before = (tiny / "base.onnx").read_bytes()
    assert "already holds a model" in _error(capsys, base)
    assert (tiny / "base.onnx").read_bytes() == before
    other = tmp_path / "other"
    main([*base[:4], str(other), *base[5:]])  # a new directory is fine
    err = _error(capsys, ["mcm", "--base", str(other), "--data", str(scenes), "--out", str(tiny),
                          "--run-dir", str(tmp_path / "m"), *SMALL])
    assert f"the base of {other}" in err
    main([*base[:6], str(tmp_path / "b2"), *base[7:], "--overwrite"])
    assert (tiny / "base.onnx").read_bytes() != before


def test_bad_modalities_and_data_are_one_kind_of_error(scenes: Path, tiny: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    common = ["mcm", "--base", str(tiny), "--out", str(tmp_path / "o"), "--run-dir", str(tmp_path / "r"), *SMALL]
    assert "segmentation given twice" in _error(capsys, [*common, "--data", str(scenes),
                                                          "--modalities", "segmentation,segmentation"])
    assert "no 'normals' maps (it has: segmentation, sketch, depth)" in _error(
        capsys, [*common, "--data", str(scenes), "--modalities", "normals"])
    assert "no PNG or JPEG images" in _error(capsys, [*common, "--data", str(tmp_path)])
    with pytest.raises(SystemExit) as e:  # argparse's own errors: the same exit status
        main(["mcm", "--data", str(scenes)])
    assert e.value.code == 2


def test_help_shows_defaults() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    mcm_help, scenes_help = (" ".join(p.format_help().split()) for p in (sub["mcm"], sub["data"]._actions[1].choices["scenes"]))
    assert "(default: 3000)" in mcm_help and "every modality of the dataset" in mcm_help
    assert "(default: 1000)" in scenes_help and "(default: 64)" in scenes_help


def test_training_prints_no_torch_warning(scenes: Path, tiny: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["mcm", "--base", str(tiny), "--data", str(scenes), "--out", str(tmp_path / "o"),
              "--run-dir", str(tmp_path / "r"), *SMALL])
    assert not [w for w in caught if "requires_grad" in str(w.message)]
