"""Contract 2 end to end on tiny random diffusers pipelines built here (no download): import with
`export-diffusers`, the tokenizer's ids, MCM training on the latent text model, and the device's
replay of every vector (`mcm-edge verify`, when the binary is built: scripts/test.sh builds it
before these tests run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest

from mcm_train.cli import _carry_nets, main
from mcm_train.data.classes import DataError
from mcm_train.data.latents import load_captions
from mcm_train.export.flops import find_mcm_edge
from mcm_train.export.pipeline import TOKENIZER_PROMPTS, UnsupportedModel, export_pipeline, load_pipeline, tokenize
from mcm_train.export.tiny_diffusers import write_tiny_pipeline
from mcm_train.training.text import TextEmbedder, guidance_embedding


def _verify(model_dir: Path) -> list[dict]:
    """`mcm-edge verify --json` on `model_dir`: every check, asserted to pass."""
    binary = find_mcm_edge()
    if binary is None:
        pytest.skip("mcm-edge is not built (cargo build --release); scripts/test.sh builds it first")
    run = subprocess.run([str(binary), "verify", str(model_dir), "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    checks = json.loads(run.stdout)
    assert checks and all(c["max_abs_diff"] <= c["tolerance"] for c in checks), checks
    return checks


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three tiny pipeline kinds, tokenizers as real SD folders keep them (vocab + merges only)."""
    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for kind in ("sd", "lcm", "turbo"):
        out[kind] = write_tiny_pipeline(root / kind, kind)
        (out[kind] / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def exported(pipelines: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exported")
    for kind, src in pipelines.items():
        export_pipeline(src, root / kind, size=32 if kind == "sd" else None)
    return {kind: root / kind for kind in pipelines}


def test_export_writes_contract_2_with_the_schedulers_settings(exported: dict[str, Path]) -> None:
    docs = {k: tomllib.loads((d / "model.toml").read_text()) for k, d in exported.items()}
    sd, lcm, turbo = docs["sd"], docs["lcm"], docs["turbo"]
    assert sd["format"] == 2 and sd["image"]["size"] == 32 and lcm["image"]["size"] == 64
    assert sd["latent"]["channels"] == 4 and sd["latent"]["downsampling"] == 8 and sd["latent"]["scaling_factor"] == 0.18215
    assert lcm["latent"]["vae"] == "AutoencoderTiny" and lcm["latent"]["scaling_factor"] == 1.0
    want = {"sampler": "ddim", "timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False}
    assert {k: sd["schedule"][k] for k in want} == want
    assert lcm["schedule"]["sampler"] == "lcm" and lcm["schedule"]["original_inference_steps"] == 50
    assert lcm["base"]["timestep_cond"] == 8 and "timestep_cond" not in sd["base"]
    assert turbo["schedule"]["sampler"] == "euler" and turbo["schedule"]["timestep_spacing"] == "trailing"
    assert (sd["text"]["guidance_scale"], lcm["text"]["guidance_scale"], turbo["text"]["guidance_scale"]) == (7.5, 8.5, 0.0)
    assert sd["text"]["max_length"] == 77 and sd["text"]["hidden_size"] == 8
    if find_mcm_edge() is not None:  # tract's FLOP estimate of each net, recorded by export-diffusers
        assert sd["base"]["flops"] > 0 and sd["text"]["flops"] > 0 and sd["latent"]["decoder"]["flops"] > 0
        assert sd["base"]["flops_per_step"] == 2 * sd["base"]["flops"], "two passes with classifier-free guidance"
    for d in exported.values():
        for f in ("base.onnx", "decoder.onnx", "encoder.onnx", "text_encoder.onnx", "tokenizer.json"):
            assert (d / f).is_file(), f
        base = onnx.load(str(d / "base.onnx"))
        assert base.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "the batch is dynamic"


def test_the_device_tokenizer_file_gives_the_python_tokenizers_ids(pipelines: dict[str, Path], exported: dict[str, Path]) -> None:
    """tokenizer.json read by the `tokenizers` library (what the device reads, the same format) gives
    transformers' CLIPTokenizer's ids for unicode, punctuation, white space and a prompt longer
    than 77 tokens; the Rust tokenizer is held to the same ids by `mcm-edge verify`."""
    pipe = load_pipeline(pipelines["sd"])
    doc = tomllib.loads((exported["sd"] / "model.toml").read_text())
    ours = TextEmbedder(exported["sd"], doc["text"]).token_ids(TOKENIZER_PROMPTS)
    theirs = tokenize(pipe.tokenizer, TOKENIZER_PROMPTS, 77).numpy()
    assert (ours == theirs).all()
    assert (ours[-1][:-1] != doc["text"]["pad_token_id"]).all(), "the long prompt fills all 77 tokens (truncated)"
    assert ours[-1, 0] == pipe.tokenizer.bos_token_id and ours[-1, -1] == pipe.tokenizer.eos_token_id
    vectors = np.load(exported["sd"] / "test_vectors" / "tokenizer.input_ids.npy")
    assert (vectors == theirs).all()


@pytest.mark.parametrize("kind", ["sd", "lcm", "turbo"])
def test_the_device_reproduces_diffusers_pipelines(exported: dict[str, Path], kind: str) -> None:
    """tract runs the whole generation (text encoder, classifier-free guidance or LCM's guidance
    embedding, the sampler, the decoder) from diffusers' latents and noise to within 1e-3 of
    diffusers' own decoded image, and every net within 1e-4."""
    checks = _verify(exported[kind])
    images = [c for c in checks if c["what"].startswith("pipeline") and "decoded image" in c["what"]]
    assert len(images) == 2 and all(c["max_abs_diff"] < 1e-3 for c in images)
    assert sum(1 for c in checks if c["what"].startswith("tokenizer")) == len(TOKENIZER_PROMPTS)


def test_exporters_timestep_and_external_data_variants_are_read(exported: dict[str, Path], tmp_path: Path) -> None:
    """A base whose `timestep` is an int64 scalar (as other exporters write it) is fed as it
    declares; weights in an external data file are loaded from beside the model; a data
    location outside the model directory is refused."""
    variant = tmp_path / "variant"
    shutil.copytree(exported["sd"], variant)
    model = onnx.load(str(variant / "base.onnx"))
    graph = model.graph
    t = next(i for i in graph.input if i.name == "timestep")
    t.type.tensor_type.elem_type = onnx.TensorProto.INT64
    del t.type.tensor_type.shape.dim[:]
    for node in graph.node:
        node.input[:] = ["timestep_f32" if i == "timestep" else i for i in node.input]
    graph.node.insert(0, onnx.helper.make_node("Cast", ["timestep"], ["timestep_f32"], to=onnx.TensorProto.FLOAT))
    onnx.save_model(model, str(variant / "base.onnx"), save_as_external_data=True, location="base.onnx.data",
                    size_threshold=0)
    external = onnx.load(str(variant / "base.onnx"), load_external_data=False).graph.initializer
    assert sum(i.data_location == onnx.TensorProto.EXTERNAL for i in external) > 10
    _verify(variant)
    carried = tmp_path / "carried"  # what `mcm-train mcm --out NEW` does with the base: the data file goes along
    _carry_nets(variant, carried, tomllib.loads((variant / "model.toml").read_text()), skip=("mcm", "modalities"),
                modalities=set())
    assert (carried / "base.onnx.data").is_file()
    _verify(carried)
    escaped = onnx.load(str(variant / "base.onnx"), load_external_data=False)
    for init in escaped.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../base.onnx.data"
    shutil.copy(variant / "base.onnx.data", tmp_path / "base.onnx.data")
    onnx.save_model(escaped, str(variant / "base.onnx"))
    binary = find_mcm_edge()
    run = subprocess.run([str(binary), "verify", str(variant)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "base.onnx" in run.stderr, run.stdout + run.stderr


def test_an_mcm_trains_on_the_latent_text_model_and_runs_on_the_device(exported: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert main(["data", "scenes", "--count", "8", "--size", "32", "--out", str(data)]) in (None, 0)
    stems = sorted(p.stem for p in (data / "images").glob("*.png"))
    (data / "captions.json").write_text(json.dumps({stems[0]: "a lake under a blue sky", stems[1]: "snow on the mountains"}))
    out = tmp_path / "model"
    main(["mcm", "--base", str(exported["sd"]), "--data", str(data), "--out", str(out), "--run-dir", str(tmp_path / "run"),
          "--steps", "3", "--batch-size", "2", "--channels", "8,16", "--res-blocks", "1", "--attention", ""])
    doc = tomllib.loads((out / "model.toml").read_text())
    assert doc["format"] == 2 and doc["mcm"]["cond_fold"] == 8 and doc["mcm"]["steps"] == 3
    if find_mcm_edge() is not None:
        assert doc["mcm"]["flops"] > 0 and doc["base"]["flops"] > 0, "tract's FLOPs of the MCM beside the base's"
    mcm = onnx.load(str(out / "mcm.onnx"))
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim[1:]] for i in mcm.graph.input}
    assert dims["sample"] == [4, 4, 4] and dims["cond"] == [13, 32, 32], "latent grid for x_t, image size for the maps"
    assert list((data / ".mcm-latents").glob("*.npy")), "the latents are cached beside the data"
    checks = _verify(out)
    assert any(c["what"].startswith("mcm.gamma") for c in checks)


def test_unsupported_models_are_refused_with_what_is_missing(pipelines: dict[str, Path], tmp_path: Path) -> None:
    sdxl = tmp_path / "sdxl"
    shutil.copytree(pipelines["sd"], sdxl)
    cfg = json.loads((sdxl / "unet" / "config.json").read_text())
    (sdxl / "unet" / "config.json").write_text(json.dumps({**cfg, "addition_embed_type": "text_time"}))
    with pytest.raises(UnsupportedModel, match="text_embeds and time_ids"):
        load_pipeline(sdxl)
    other = tmp_path / "dpm"
    shutil.copytree(pipelines["sd"], other)
    sched = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    dpm = {**sched, "_class_name": "DPMSolverMultistepScheduler"}
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps(dpm))
    with pytest.raises(UnsupportedModel, match="DDIM, Euler or LCM"):
        load_pipeline(other)
    shutil.rmtree(other / "text_encoder")
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_pipeline(other)


def test_captions_come_from_json_or_csv(tmp_path: Path) -> None:
    (tmp_path / "captions.csv").write_text("stem,caption\na,a lake\nb,\n")
    assert load_captions(tmp_path, ["a", "b", "c"]) == ["a lake", "", ""]
    (tmp_path / "captions.json").write_text("{}")
    with pytest.raises(DataError, match="keep one"):
        load_captions(tmp_path, ["a"])
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "captions.json").write_text('{"zzz": "nothing"}')
    with pytest.raises(DataError, match="no caption names an image"):
        load_captions(tmp_path, ["a"])


def test_guidance_embedding_matches_diffusers() -> None:
    import torch
    from diffusers import LatentConsistencyModelPipeline

    want = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, torch.tensor([7.5]), 8)[0].numpy()
    assert np.abs(guidance_embedding(7.5, 8) - want).max() < 1e-3
