"""`mcm-train`: the host-side trainer. Run `mcm-train --help` and `mcm-train COMMAND --help`."""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path

from .contract.modalities import ModalitySpec, cond_channels
from .contract.model_toml import read_model_toml, update_model_toml
from .contract.schedule import TIMESTEP_SPACINGS, ScheduleConfig
from .data.classes import DEFAULT_CLASSES, DataError, load_classes
from .data.folder import Dataset, load_dataset
from .data.scenes import write_scenes
from .export.onnx import export_base, export_denoiser, export_estimator, export_mcm, export_segmenter
from .export.parity import write_parity_vectors
from .export.random_models import PRESETS
from .nets.mcm import MCM
from .nets.unet import UNet, UNetConfig, count_parameters
from .training.distill import McmTeacher, Teacher
from .training.loop import TrainConfig, TrainResult, resolve_device
from .training.step_timer import StepTimer
from .training.trainers import pretrain_base, train_estimator, train_mcm, train_segmenter


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default in `--help`, except where there is none (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class CliError(Exception):
    """A command cannot run as asked (reported as `mcm-train: error: ...`, exit status 2)."""


def _add_train_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, ema: float) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (images/ and one folder per modality)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write (e.g. models/default)")
    p.add_argument("--run-dir", type=Path, help="checkpoints, loss log and plot; a run resumes only there and only "
                                                "for the same output, data and configuration "
                                                "(default: runs/<OUT with / as ->/<command>)")
    p.add_argument("--steps", type=int, default=steps, help="optimiser steps in total, across resumes")
    p.add_argument("--batch-size", type=int, default=batch, help="images per step")
    p.add_argument("--lr", type=float, default=lr, help="AdamW learning rate")
    p.add_argument("--ema-decay", type=float, default=ema, help="decay of the exported weight average")
    p.add_argument("--seed", type=int, default=0, help="seeds batches and noise")
    p.add_argument("--minutes", type=float, help="wall-clock budget for this invocation (resume later)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="where the net trains (default: cuda when PyTorch sees a GPU, else cpu); the frozen "
                        "base through onnxruntime stays on the CPU")
    p.add_argument("--limit", type=int, help="use only the first N examples of the dataset")


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace the base of an existing model directory given as --out")


def _run_dir(a: argparse.Namespace) -> Path:
    """`--run-dir`, else `runs/<OUT with / as ->/<command>`: a run directory belongs to its output."""
    if a.run_dir is not None:
        return a.run_dir
    slug = "-".join(p for p in a.out.as_posix().split("/") if p not in ("", ".", "..")) or "out"
    return Path("runs") / slug / a.command


def _identity(a: argparse.Namespace, **config: object) -> dict:
    """What a training run is (`TrainConfig.identity`): command, output, data and `config`, as JSON values."""
    return json.loads(json.dumps({"command": a.command, "out": str(a.out.resolve()), "data": str(a.data.resolve()),
                                  "limit": a.limit, **config}))


def _refuse_other_base(a: argparse.Namespace, base_dir: Path | None) -> None:
    """An existing model directory as `--out` keeps its base unless `--overwrite`: refuse to replace
    it with a newly trained base (`base_dir` None) or with the base of another model directory.

    Raises:
        CliError: `--out` holds a base.onnx that would be replaced.
    """
    existing = a.out / "base.onnx"
    if a.overwrite or not existing.exists():
        return
    if base_dir is not None and (a.out.resolve() == base_dir.resolve()
                                 or existing.read_bytes() == (base_dir / "base.onnx").read_bytes()):
        return
    what = "a newly trained base" if base_dir is None else f"the base of {base_dir}"
    raise CliError(f"{a.out} already holds a model with its own base.onnx; it would be replaced with {what} "
                   "(give another --out, or --overwrite to replace it)")


def _add_budget_final(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget-final", action="store_true",
                   help="the --minutes budget ends training: export the weights reached then (equal wall-clock "
                        "comparisons) instead of stopping for a later resume")


def _train_config(a: argparse.Namespace, identity: dict) -> TrainConfig:
    return TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, ema_decay=a.ema_decay, seed=a.seed,
                       minutes=a.minutes, checkpoint_every=a.checkpoint_every, threads=a.threads,
                       device=resolve_device(a.device),
                       budget_final=getattr(a, "budget_final", False), identity=identity)


def _provenance(a: argparse.Namespace, result: TrainResult, net: object) -> dict:
    return {"dataset": str(a.data), "steps": result.steps, "batch_size": a.batch_size,
            "wall_time_s": round(result.wall_time_s, 1), "seconds_per_step": round(result.seconds_per_step, 4),
            "final_loss": round(result.final_loss, 6), "parameters": count_parameters(net),
            **({"stopped_by_budget_minutes": a.minutes} if not result.done else {})}


def cmd_data(a: argparse.Namespace) -> None:
    write_scenes(a.out, a.count, a.size, a.seed, load_classes(a.classes))
    print(f"wrote {a.count} scenes of {a.size}x{a.size} to {a.out}")


def cmd_pretrain_base(a: argparse.Namespace) -> None:
    ds = load_dataset(a.data, limit=a.limit)
    cfg = UNetConfig(in_channels=3, out_channels=3, channels=_ints(a.channels), num_res_blocks=a.res_blocks,
                     attention_resolutions=_ints(a.attention), image_size=ds.size)
    sched = ScheduleConfig()
    _refuse_other_base(a, None)
    run_dir = _run_dir(a)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"unet": cfg.to_dict(), "schedule": sched.to_dict()}))
    net = UNet(cfg)
    print(f"base U-Net: {count_parameters(net):,} parameters, {ds.size}x{ds.size}, {len(ds)} images")
    result = pretrain_base(ds, net, sched, _train_config(a, _identity(a, unet=cfg.to_dict())), run_dir)
    if not result.done:
        return
    export_base(result.model, a.out)
    update_model_toml(a.out, image={"size": ds.size, "channels": 3, "value_range": [-1.0, 1.0]},
                      schedule=sched.to_dict(),
                      base={"file": "base.onnx", "architecture": cfg.to_dict(), **_provenance(a, result, result.model)})
    print(f"exported {a.out}/base.onnx after {result.steps} steps, loss {result.final_loss:.4f}")


def _modalities(text: str, ds: Dataset) -> list[ModalitySpec]:
    """The `--modalities` list, in the order given (the `cond` order), each taken from the dataset.

    Raises:
        DataError: a name is repeated or the dataset has no such maps.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise DataError("--modalities: name at least one modality")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"--modalities: {', '.join(repeated)} given twice")
    return [ds.modality(n) for n in names]


def _conditioning_inputs(a: argparse.Namespace) -> tuple[dict, Dataset, list[ModalitySpec]]:
    """model.toml of `--base`, the dataset and the modalities, checked against each other (mcm, controlnet)."""
    doc = read_model_toml(a.base)
    if "image" not in doc or "schedule" not in doc:
        raise CliError(f"{a.base}/model.toml: needs [image] and [schedule] (run pretrain-base or export-diffusers)")
    ds = load_dataset(a.data, limit=a.limit)
    if ds.size != doc["image"]["size"]:
        raise CliError(f"{a.data}: images are {ds.size}px, the base in {a.base} expects {doc['image']['size']}px")
    return doc, ds, _modalities(a.modalities or ",".join(m.name for m in ds.modalities), ds)


def _carry_base(a: argparse.Namespace, doc: dict, modalities: list[ModalitySpec]) -> None:
    """A conditioning model written to a new directory carries the base it was trained on and the
    other nets of `--base` (the segmenter and the estimators that `mcm-edge eval` needs): files,
    test vectors, sections; an estimator only when the new model has its modality."""
    if a.out.resolve() != a.base.resolve():
        _carry_nets(a.base, a.out, doc, skip=("mcm", "modalities"), modalities={m.name for m in modalities})


def _net_files(section: dict) -> list[str]:
    """The files a model.toml section names: its `file` and `tokenizer`, and those of the nets
    nested in it (`[latent.decoder]`, `[latent.encoder]`)."""
    files = [section[k] for k in ("file", "tokenizer") if isinstance(section.get(k), str)]
    return files + [f for v in section.values() if isinstance(v, dict) for f in _net_files(v)]


def _carry_nets(src: Path, out: Path, doc: dict, skip: tuple[str, ...], modalities: set[str]) -> None:
    """Copy the nets of the model directory `src` (model.toml `doc`) to `out` with their test
    vectors and sections, except the sections in `skip`; estimators only of `modalities`. A
    contract-2 directory's decoder, encoder, text encoder and tokenizer go along, with the
    tokenizer's and diffusers' pipeline vectors."""
    estimators = {k: v for k, v in doc.get("estimators", {}).items() if k in modalities}
    nets = {name: section for name, section in doc.items()
            if name not in (*skip, "estimators") and isinstance(section, dict)}
    (out / "test_vectors").mkdir(parents=True, exist_ok=True)
    stems = ["tokenizer", "pipeline"] if "text" in nets else []
    for file in [f for section in [*nets.values(), *estimators.values()] for f in _net_files(section)]:
        for part in (file, f"{file}.data"):  # the weights of a file above 2 GB are beside it
            if (src / part).exists():
                shutil.copy2(src / part, out / part)
        stems.append(Path(file).stem)
    for stem in stems:
        for vec in (src / "test_vectors").glob(f"{stem}.*"):
            shutil.copy2(vec, out / "test_vectors" / vec.name)
    carried = {k: v for k, v in doc.items() if k not in (*skip, "estimators")}
    update_model_toml(out, **carried, **({"estimators": estimators} if estimators else {}))


def _warm_start(a: argparse.Namespace, mcm: MCM, modalities: list[ModalitySpec]) -> dict:
    """Apply `--init-from` to a new MCM (see `training.warm_start`); returns `{"init_from": DIR}`
    (resolved) for the run identity, or {} without the option."""
    if a.init_from is None:
        return {}
    from .training.warm_start import warm_start

    kept, added = warm_start(mcm, modalities, a.init_from)
    print(f"MCM initialised from {a.init_from}/mcm.onnx: weights of {', '.join(kept) or 'x_t and eps only'} "
          f"copied{', ' + ', '.join(added) + ' starting at zero' if added else ''}")
    return {"init_from": str(a.init_from.resolve())}


def _mcm_teacher(a: argparse.Namespace, doc: dict, modalities: list[ModalitySpec]) -> tuple[McmTeacher, list[int]]:
    """The teacher of `mcm-train mcm --distill-from DIR` (DIR's base and MCM through onnxruntime)
    and its grid: twice the distilled `--base`'s steps, of which the base's grid is every other one.

    Raises:
        CliError: `--base` is not distilled, DIR has no MCM of method `mcm` for the same
            modalities, or another image size or noise schedule.
    """
    from .contract.schedule import timestep_grid
    from .training.frozen import onnx_base_fn, onnx_mcm_fn

    grid, teacher_doc = doc["schedule"].get("timesteps"), read_model_toml(a.distill_from)
    if not grid:
        raise CliError(f"{a.base}: --distill-from needs a distilled base ([schedule] timesteps, from `mcm-train distill`)")
    section = teacher_doc.get("mcm", {})
    if section.get("method", "mcm") != "mcm" or not (a.distill_from / section.get("file", "mcm.onnx")).exists():
        raise CliError(f"{a.distill_from}: --distill-from needs a model directory with an MCM (method \"mcm\")")
    theirs, ours = teacher_doc.get("modalities", []), [m.to_toml() for m in modalities]
    if theirs != ours:
        raise CliError(f"{a.distill_from}: its MCM has modalities {[m['name'] for m in theirs]}, this one "
                       f"{[m['name'] for m in ours]}: the teacher needs the same cond (names, kinds, channels, order)")
    noise = ScheduleConfig.from_toml({**teacher_doc["schedule"], "prediction_type": doc["schedule"]["prediction_type"]})
    if noise != ScheduleConfig.from_toml(doc["schedule"]) or teacher_doc["image"] != doc["image"]:
        raise CliError(f"{a.distill_from}: another noise schedule or image than {a.base}")
    spacing = doc["base"].get("distillation", {}).get("spacing", "quadratic")
    teacher_grid = timestep_grid(2 * len(grid), noise.num_train_timesteps, spacing)
    if teacher_grid[::2] != grid:
        raise CliError(f"{a.base}: its grid {grid} is not every other step of the {spacing} grid {teacher_grid}")
    teacher = McmTeacher(onnx_base_fn(a.distill_from / teacher_doc["base"]["file"], a.threads),
                         teacher_doc["schedule"]["prediction_type"],
                         onnx_mcm_fn(a.distill_from / section.get("file", "mcm.onnx"), a.threads))
    return teacher, teacher_grid


def cmd_mcm(a: argparse.Namespace) -> None:
    from .training.distill import distill_mcm
    from .training.frozen import load_base_run, onnx_base_fn, torch_base_fn

    doc, ds, modalities = _conditioning_inputs(a)
    _refuse_other_base(a, a.base)
    latent = doc.get("latent")
    if latent and (a.base_run or a.distill_from or a.init_from):
        raise CliError(f"{a.base}: a latent base trains its MCM from base.onnx only (no --base-run, --distill-from, --init-from)")
    batches, timestep_cond = (_latent_batches(a, doc, ds) if latent else (None, None))
    base_fn = (torch_base_fn(load_base_run(a.base_run), resolve_device(a.device)) if a.base_run
               else onnx_base_fn(a.base / doc["base"].get("file", "base.onnx"), a.threads, timestep_cond))
    k = cond_channels(modalities)
    fold = int(latent["downsampling"]) if latent else 1
    channels = int(latent["channels"]) if latent else doc["image"]["channels"]
    cfg = UNetConfig(channels=_ints(a.channels), num_res_blocks=a.res_blocks, attention_resolutions=_ints(a.attention),
                     image_size=ds.size // fold, space_to_depth=a.space_to_depth)
    mcm = MCM(channels, k, cfg, cond_fold=fold, cond_width=a.cond_width)
    print(f"MCM: {count_parameters(mcm):,} parameters, cond channels {k}"
          f"{f' folded {fold}x{fold} onto the {ds.size // fold}px latent grid' if fold > 1 else ''}, base from "
          f"{'PyTorch ' + str(a.base_run) if a.base_run else 'onnxruntime ' + str(a.base / 'base.onnx')}")
    init_from = _warm_start(a, mcm, modalities)
    sched, grid = ScheduleConfig.from_toml(doc["schedule"]), doc["schedule"].get("timesteps")
    teaching = {"distill_from": str(a.distill_from.resolve())} if a.distill_from else {}
    identity = _identity(a, base=str(a.base.resolve()), mcm=cfg.to_dict(), modalities=[m.to_toml() for m in modalities],
                         **init_from, **teaching, **({"cond_fold": fold, "cond_width": a.cond_width} if fold > 1 else {}))
    tc, losses = _train_config(a, identity), {"drop_prob": a.drop_prob, "l1_weight": a.l1_weight}
    if a.distill_from:
        teacher, teacher_grid = _mcm_teacher(a, doc, modalities)
        print(f"loss: two conditioned steps of {a.distill_from} ({teacher_grid}) per step of the base ({grid})")
        result = distill_mcm(ds, mcm, base_fn, modalities, sched, teacher, teacher_grid, tc, _run_dir(a), **losses)
    else:
        if grid:
            print(f"timesteps: the distilled base's grid {grid}")
        result = train_mcm(ds, mcm, base_fn, modalities, sched, tc, _run_dir(a), **losses, timesteps=grid, batches=batches)
    if not result.done and not a.budget_final:
        return
    _carry_base(a, doc, modalities)
    export_mcm(result.model, k, a.out)
    update_model_toml(a.out, modalities=[m.to_toml() for m in modalities],
                      mcm={"file": "mcm.onnx", "method": "mcm", "cond_channels": k, "architecture": cfg.to_dict(),
                           **({"cond_fold": fold, "cond_width": a.cond_width} if fold > 1 else {}),
                           "drop_prob": a.drop_prob, "l1_weight": a.l1_weight,
                           **({"init_from": str(a.init_from)} if init_from else {}),
                           "loss": "distillation" if a.distill_from else "denoising",
                           **({"distill_from": str(a.distill_from)} if a.distill_from else {}),
                           **({"timesteps": "grid"} if grid and not a.distill_from else {}),
                           **_provenance(a, result, result.model)})
    write_parity_vectors(a.out)
    if latent:
        from .export.flops import record_flops

        record_flops(a.out)  # tract's FLOPs of the MCM beside the base's, when mcm-edge is built
    print(f"exported {a.out}/mcm.onnx after {result.steps} steps, loss {result.final_loss:.4f}")


def _latent_batches(a: argparse.Namespace, doc: dict, ds: Dataset) -> tuple[object, object]:
    """The training batches of a latent base (contract 2): the images encoded once with its
    encoder.onnx (cached in the dataset folder), each image's caption embedded with its text
    encoder; and LCM's guidance embedding at the model's guidance scale for a base that takes one."""
    from .data.latents import encode_latents, load_captions
    from .training.batches import Batches
    from .training.text import TextEmbedder, guidance_embedding

    encoder = doc["latent"].get("encoder")
    if not encoder:
        raise CliError(f"{a.base}/model.toml: [latent] has no encoder (re-export it with `mcm-train export-diffusers`)")
    latents = encode_latents(ds, a.data, a.base / encoder["file"], a.threads)
    text = doc.get("text")
    embeddings = None
    if text:
        captions = load_captions(a.data, ds.stems)
        embeddings = TextEmbedder(a.base, text, a.threads).embed(captions)
        print(f"latents of {len(ds)} images (and their flips) from {encoder['file']}; "
              f"{sum(1 for c in captions if c)} captions, the others the empty prompt")
    dim = doc["base"].get("timestep_cond")
    timestep_cond = guidance_embedding(float(text.get("guidance_scale", 7.5)) - 1 if text else 0.0, int(dim)) if dim else None
    return Batches(ds, latents, embeddings), timestep_cond


def cmd_controlnet(a: argparse.Namespace) -> None:
    from .export.onnx import export_controlnet
    from .nets.controlnet import ControlNet
    from .training.controlnet import check_base_matches, train_controlnet
    from .training.frozen import load_base_run

    if a.out.resolve() == a.base.resolve():
        raise CliError("--out must differ from --base: the baseline would replace the model's own MCM")
    doc, ds, modalities = _conditioning_inputs(a)
    _refuse_other_base(a, a.base)
    base = load_base_run(a.base_run)
    check_base_matches(base, a.base)
    k = cond_channels(modalities)
    net = ControlNet(base, k, _ints(a.hint_channels))
    print(f"ControlNet baseline: {count_parameters(net):,} trainable parameters (frozen base "
          f"{sum(p.numel() for p in base.parameters()):,}), cond channels {k}")
    identity = _identity(a, base=str(a.base.resolve()), hint_channels=list(_ints(a.hint_channels)),
                         modalities=[m.to_toml() for m in modalities])
    result = train_controlnet(ds, net, modalities, ScheduleConfig.from_toml(doc["schedule"]), _train_config(a, identity),
                              _run_dir(a), drop_prob=a.drop_prob)
    if not result.done and not a.budget_final:
        return
    _carry_base(a, doc, modalities)
    export_controlnet(result.model, a.out)
    update_model_toml(a.out, modalities=[m.to_toml() for m in modalities],
                      mcm={"file": "mcm.onnx", "method": "controlnet", "cond_channels": k,
                           "hint_channels": list(_ints(a.hint_channels)), "base_run": str(a.base_run),
                           "drop_prob": a.drop_prob, **_provenance(a, result, result.model)})
    write_parity_vectors(a.out)
    print(f"exported the ControlNet baseline as {a.out}/mcm.onnx (gamma = 0, beta = eps_controlnet - eps) after "
          f"{result.steps} steps, loss {result.final_loss:.4f}")


def _load_teacher(a: argparse.Namespace) -> tuple[Teacher, dict]:
    """The teacher of `mcm-train distill` and its model.toml: the U-Net of `--teacher`'s base.onnx
    read back into PyTorch (checked against its test vectors), or `--teacher-run`'s weights.

    or `--teacher-diffusers`' UNet2DModel (both checked against base.onnx's test vectors too).

    Raises:
        CliError: `--teacher` has no base made by mcm-train (no `[base.architecture]`) and no
            `--teacher-diffusers` is given.
        WeightsError: the PyTorch teacher differs from base.onnx.
    """
    from .export.diffusers import DiffusersBase, load_diffusers_unet
    from .training.frozen import load_base_run
    from .training.onnx_weights import check_readback, load_onnx_weights, load_vectors

    doc = read_model_toml(a.teacher)
    path = a.teacher / doc.get("base", {}).get("file", "base.onnx")
    if "schedule" not in doc or ("architecture" not in doc.get("base", {}) and not a.teacher_diffusers):
        raise CliError(f"{a.teacher}/model.toml: needs [schedule] and [base.architecture] (a base made by "
                       "`mcm-train pretrain-base`), or give --teacher-diffusers for a base from export-diffusers")
    if a.teacher_diffusers:
        net = DiffusersBase(load_diffusers_unet(a.teacher_diffusers)[0])
    elif a.teacher_run:
        net = load_base_run(a.teacher_run)
    else:
        net = UNet(UNetConfig.from_dict(doc["base"]["architecture"]))
        load_onnx_weights(net, path, prefix="net.")
    check_readback(net, path, load_vectors(a.teacher, "base", ("sample", "timestep")))
    return Teacher(net.eval(), doc["schedule"]["prediction_type"]), doc


def _student_dir(a: argparse.Namespace, steps: int) -> Path:
    """Where the student of `steps` steps goes: `--out` for `--sample-steps`, `OUT-Nsteps` for later stages."""
    return a.out if steps == a.sample_steps else a.out.with_name(f"{a.out.name}-{steps}steps")


def _export_student(a: argparse.Namespace, doc: dict, result: TrainResult, distillation: dict, steps: int) -> None:
    """Write the `steps`-step student as a model directory (`_student_dir`): its base.onnx, the
    teacher's other nets (MCM, segmenter, estimators) and model.toml with the prediction type and
    the timestep grid in `[schedule]` (the device samples exactly those) and `[base.distillation]`."""
    from .contract.schedule import PREDICTION_OUTPUTS, timestep_grid

    out = _student_dir(a, steps)
    _carry_nets(a.teacher, out, doc, skip=("base", "schedule"), modalities={m["name"] for m in doc.get("modalities", [])})
    output = PREDICTION_OUTPUTS[a.prediction_type]
    if isinstance(result.model, UNet):  # named as pretrain-base names it, so that it can teach in turn
        export_base(result.model, out, output)
    else:
        export_denoiser(result.model, doc["image"]["channels"], doc["image"]["size"], out, output)
    grid = timestep_grid(steps, doc["schedule"]["num_train_timesteps"], a.spacing)
    schedule = {**doc["schedule"], "prediction_type": a.prediction_type, "timesteps": grid}
    distillation = {k: v for k, v in distillation.items() if v is not None}
    kept = {k: v for k, v in doc["base"].items() if k == "architecture"}  # a diffusers student has none
    base = {"file": "base.onnx", **kept, "distillation": distillation, **_provenance(a, result, result.model)}
    update_model_toml(out, schedule=schedule, base=base)
    write_parity_vectors(out)
    print(f"exported the {steps}-step student to {out}/base.onnx ({a.prediction_type}), loss {result.final_loss:.4f}")


def cmd_distill(a: argparse.Namespace) -> None:
    import time

    from .training.distill import distill_stage, stage_steps

    teacher, doc = _load_teacher(a)
    ds = load_dataset(a.data, limit=a.limit)
    if ds.size != doc["image"]["size"]:
        raise CliError(f"{a.data}: images are {ds.size}px, the teacher in {a.teacher} expects {doc['image']['size']}px")
    counts = stage_steps(a.from_steps, a.sample_steps, _ints(a.then))
    sched = ScheduleConfig.from_toml(doc["schedule"])
    config = {"teacher": str(a.teacher), "teacher_run": str(a.teacher_run) if a.teacher_run else None,
              "teacher_diffusers": str(a.teacher_diffusers) if a.teacher_diffusers else None,
              "from_steps": a.from_steps, "spacing": a.spacing, "prediction_type": a.prediction_type}
    print(f"distilling {a.teacher} ({teacher.prediction_type}, {a.from_steps} DDIM steps) into "
          f"{' -> '.join(str(n) for n in counts)} steps, {a.prediction_type}, {a.spacing} grid")
    start = time.monotonic()
    for n in counts:
        tc = _train_config(a, _identity(a, stage=n, **config, teacher_dir=str(a.teacher.resolve())))
        if a.minutes is not None:
            tc.minutes = max(a.minutes - (time.monotonic() - start) / 60, 0.0)
        result = distill_stage(ds, teacher, n, a.prediction_type, sched, tc, _run_dir(a), a.spacing)
        if not result.done:
            return
        if n <= a.sample_steps:
            _export_student(a, doc, result, {**config, "stages": counts[:counts.index(n) + 1]}, n)
        teacher = Teacher(result.model, a.prediction_type)


def cmd_cost(a: argparse.Namespace) -> None:
    import shlex

    from .training.cost import format_report, measure_cost

    report = measure_cost(a.base, a.base_run, a.data, batch_size=a.batch_size, steps=a.steps, warmup=a.warmup,
                          threads=a.threads, limit=a.limit, methods=a.methods.split(","),
                          extra_args={"mcm": shlex.split(a.mcm_args), "controlnet": shlex.split(a.controlnet_args)},
                          repeats=a.repeats)
    print(format_report(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {a.json}")


def _reference_net(a: argparse.Namespace, out_channels: int, image_size: int,
                   modality: str | None = None) -> tuple[UNet, dict, dict]:
    """The reference net a `segmenter` / `estimator` run starts from: a new U-Net of `--channels`,
    or with `--init-from` that directory's (see `training.warm_start.reference_net_from`). Returns
    (net, the training record to write when nothing is trained, `{"init_from": DIR}` or {}).

    Raises:
        CliError: the `--init-from` net has another number of output channels than the data needs.
    """
    if a.init_from is None:
        cfg = UNetConfig(in_channels=3, out_channels=out_channels, channels=_ints(a.channels), num_res_blocks=1,
                         attention_resolutions=(), image_size=image_size, timestep_embedding=False)
        return UNet(cfg), {}, {}
    from .training.warm_start import reference_net_from

    net, old = reference_net_from(a.init_from, modality)
    if net.cfg.out_channels != out_channels:
        raise CliError(f"{a.init_from}: its net has {net.cfg.out_channels} output channels, {a.data} needs {out_channels}")
    # nothing trained (--steps 0): the file is written again and its training record stays
    record = {k: v for k, v in old.items() if k not in ("file", "architecture", "features")} if a.steps == 0 else {}
    return net, record, {"init_from": str(a.init_from.resolve())}


def _trained(result: TrainResult) -> str:
    return f"after {result.steps} steps, loss {result.final_loss:.4f}" if result.steps else "again, not trained"


def cmd_segmenter(a: argparse.Namespace) -> None:
    ds = load_dataset(a.data, limit=a.limit)
    net, record, init = _reference_net(a, len(ds.classes), ds.size)
    cfg = net.cfg
    result = train_segmenter(ds, net, _train_config(a, _identity(a, unet=cfg.to_dict(), **init)), _run_dir(a))
    if not result.done:
        return
    features = export_segmenter(result.model, a.out)
    provenance = record or {**_provenance(a, result, result.model), **init}
    update_model_toml(a.out, segmenter={"file": "segmenter.onnx", "features": features, "architecture": cfg.to_dict(),
                                        **provenance})
    print(f"exported {a.out}/segmenter.onnx {_trained(result)}")


def cmd_estimator(a: argparse.Namespace) -> None:
    ds = load_dataset(a.data, limit=a.limit)
    spec = ds.modality(a.modality)
    net, record, init = _reference_net(a, spec.channels, ds.size, a.modality)
    cfg = net.cfg
    identity = _identity(a, unet=cfg.to_dict(), modality=spec.to_toml(), **init)
    result = train_estimator(ds, net, a.modality, _train_config(a, identity), _run_dir(a))
    if not result.done:
        return
    file = export_estimator(result.model, a.modality, a.out)
    estimators = read_model_toml(a.out).get("estimators", {})
    provenance = record or {**_provenance(a, result, result.model), **init}
    estimators[a.modality] = {"file": file, "architecture": cfg.to_dict(), **provenance}
    update_model_toml(a.out, estimators=estimators)
    print(f"exported {a.out}/{file} {_trained(result)}")


def cmd_export_vectors(a: argparse.Namespace) -> None:
    index = write_parity_vectors(a.model)
    print(f"wrote {a.model}/test_vectors: schedule.alpha_bar, cond.all/first and {len(index)} fixture frames")


def cmd_export_diffusers(a: argparse.Namespace) -> None:
    from .export.diffusers import export_diffusers
    from .export.pipeline import export_pipeline, is_pipeline

    if is_pipeline(a.source):
        doc = export_pipeline(a.source, a.out, decoder=a.decoder, size=a.size)
        print(f"exported {a.source} to {a.out} (contract 2: base.onnx, decoder.onnx, encoder.onnx, text_encoder.onnx, "
              f"tokenizer.json; {doc['image']['size']} px, sampler {doc['schedule']['sampler']}); "
              f"check it with `mcm-edge verify {a.out}`")
        return
    if a.decoder or a.size:
        raise CliError(f"{a.source}: --decoder and --size are for pipeline folders with a text-conditional U-Net")
    export_diffusers(a.source, a.out)
    print(f"exported {a.source} to {a.out}/base.onnx + model.toml")


def cmd_tiny_diffusers(a: argparse.Namespace) -> None:
    from .export.tiny_diffusers import write_tiny_pipeline

    write_tiny_pipeline(a.out, a.kind, a.seed)
    print(f"wrote a tiny random {a.kind} pipeline folder (64 px, 8x8x4 latents) to {a.out}")


def cmd_export_random(a: argparse.Namespace) -> None:
    from .export.random_models import write_random_model

    classes = [{"name": c.name, "color": list(c.color)} for c in load_classes()]
    a.out.mkdir(parents=True, exist_ok=True)
    doc = write_random_model(a.out, classes, a.preset, a.seed, a.distilled)
    base, mcm = doc["base"]["parameters"], doc["mcm"]["parameters"]
    print(f"{a.out}: random {a.preset} model, base {base:,} parameters, MCM {mcm:,} ({100 * mcm / base:.1f} % of the base)")


def _add_reference_init(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--init-from", type=Path,
                   help=f"start from the {what} of this model directory, in its architecture (--steps 0: nothing is "
                        "trained, the net is written into --out in the current contract with its training record)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcm-train", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_HelpFormatter)

    d = sub.add_parser("data", help="write built-in paired data")
    dsub = d.add_subparsers(dest="kind", required=True)
    dsub.add_parser = functools.partial(dsub.add_parser, formatter_class=_HelpFormatter)
    s = dsub.add_parser("scenes", help="procedural landscapes with exact segmentation maps and Canny sketches")
    s.add_argument("--count", type=int, default=1000, help="number of scenes")
    s.add_argument("--size", type=int, default=64, help="side of the square images in pixels (>= 16)")
    s.add_argument("--seed", type=int, default=0, help="scene i depends only on (seed, i)")
    s.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    s.add_argument("--classes", type=Path, default=DEFAULT_CLASSES, help="class palette (TOML, [[classes]] name + color)")
    s.set_defaults(func=cmd_data)

    b = sub.add_parser("pretrain-base", help="train the frozen base (DDPM) and export base.onnx")
    _add_train_args(b, steps=12000, batch=16, lr=2e-4, ema=0.999)
    _add_overwrite(b)
    b.add_argument("--channels", default="16,32,64,128", help="U-Net width per resolution level")
    b.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level")
    b.add_argument("--attention", default="16", help="resolutions with self-attention, e.g. 16")
    b.set_defaults(func=cmd_pretrain_base)

    m = sub.add_parser("mcm", help="train an MCM on a frozen base and export mcm.onnx")
    _add_train_args(m, steps=3000, batch=16, lr=2e-4, ema=0.995)
    _add_overwrite(m)
    m.add_argument("--base", type=Path, required=True, help="model dir with base.onnx + model.toml")
    m.add_argument("--base-run", type=Path, help="use the PyTorch weights of this pretrain-base run dir instead of onnxruntime")
    m.add_argument("--modalities", help="comma-separated, in cond order (default: every modality of the dataset)")
    m.add_argument("--channels", default="16,32,64", help="MCM U-Net width per resolution level")
    m.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level")
    m.add_argument("--attention", default="16", help="resolutions (of the folded input) with self-attention")
    m.add_argument("--space-to-depth", type=int, default=1,
                   help="fold f x f pixels into channels: the MCM runs at H/f, about f*f cheaper but weaker "
                        "(README \"Speed\"); 1 = full resolution")
    m.add_argument("--cond-width", type=int, default=64,
                   help="a latent base: channels the folded maps are projected to (at most K x f^2)")
    m.add_argument("--drop-prob", type=float, default=0.3, help="probability of dropping each modality")
    m.add_argument("--l1-weight", type=float, default=1e-4, help="L1 penalty on gamma and beta")
    m.add_argument("--init-from", type=Path,
                   help="model dir whose MCM (same architecture) starts this one: its modalities keep their "
                        "weights, new ones start at zero (README \"A new modality\")")
    m.add_argument("--distill-from", type=Path,
                   help="for a distilled --base: model dir (base + MCM, same modalities) whose two conditioned DDIM "
                        "steps are the target of one step of this MCM, instead of the denoising loss (README \"A "
                        "few-step base\")")
    _add_budget_final(m)
    m.set_defaults(func=cmd_mcm)

    c = sub.add_parser("controlnet", help="train a ControlNet-style baseline (trainable encoder copy, gradients "
                                          "through the frozen base's decoder) and export it as mcm.onnx")
    _add_train_args(c, steps=3000, batch=16, lr=2e-4, ema=0.995)
    _add_overwrite(c)
    c.add_argument("--base", type=Path, required=True, help="model dir with base.onnx + model.toml")
    c.add_argument("--base-run", type=Path, required=True, help="the pretrain-base run dir base.onnx was exported from")
    c.add_argument("--modalities", help="comma-separated, in cond order (default: every modality of the dataset)")
    c.add_argument("--hint-channels", default="16,32", help="widths of the hint convs on cond (a zero conv follows)")
    c.add_argument("--drop-prob", type=float, default=0.3, help="probability of dropping each modality")
    _add_budget_final(c)
    c.set_defaults(func=cmd_controlnet)

    d = sub.add_parser("distill", help="progressive distillation of a base into a few-step student (Salimans & Ho "
                                       "2022); the teacher's MCM and reference nets are carried along")
    _add_train_args(d, steps=1500, batch=16, lr=1e-4, ema=0.999)
    d.set_defaults(func=cmd_distill)
    d.add_argument("--teacher", type=Path, required=True,
                   help="model dir of the teacher (base.onnx + model.toml made by mcm-train pretrain-base)")
    d.add_argument("--teacher-run", type=Path, help="use the PyTorch weights of this pretrain-base run dir")
    d.add_argument("--teacher-diffusers", type=Path,
                   help="the local diffusers folder --teacher was imported from (export-diffusers): its UNet2DModel "
                        "is the teacher and the student")
    d.add_argument("--sample-steps", type=int, default=4, help="DDIM steps of the student written to --out "
                                                                 "(--steps counts optimiser steps per stage)")
    d.add_argument("--from-steps", type=int, default=32,
                   help="the teacher's DDIM steps in the first stage; halved each stage down to --sample-steps")
    d.add_argument("--then", default="", help="later stages after --sample-steps, each half the one before, "
                                              "e.g. 2,1; written to OUT-2steps, OUT-1steps")
    d.add_argument("--spacing", choices=TIMESTEP_SPACINGS, default="quadratic",
                   help="timestep grid shared by training and the device")
    d.add_argument("--prediction-type", choices=["v_prediction", "sample"], default="v_prediction",
                   help="what the student predicts")

    t = sub.add_parser("cost", help="training cost, MCM vs ControlNet baseline: s/step, peak memory, parameters")
    t.add_argument("--base", type=Path, required=True, help="model dir with base.onnx + model.toml")
    t.add_argument("--base-run", type=Path, required=True, help="pretrain-base run dir (both methods use the PyTorch base)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder")
    t.add_argument("--batch-size", type=int, default=16, help="images per step")
    t.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    t.add_argument("--threads", type=int, default=2, help="torch threads")
    t.add_argument("--repeats", type=int, default=1, help="run the methods alternately this many times each")
    t.add_argument("--limit", type=int, help="use only the first N examples of the dataset")
    t.add_argument("--methods", default="mcm,controlnet", help="comma-separated methods to measure")
    t.add_argument("--mcm-args", default="", help="extra `mcm-train mcm` options, e.g. \"--channels 16,32,64\"")
    t.add_argument("--controlnet-args", default="", help="extra `mcm-train controlnet` options")
    t.add_argument("--json", type=Path, help="write the report here (e.g. docs/train-cost.json)")
    t.set_defaults(func=cmd_cost)

    g = sub.add_parser("segmenter", help="train the reference segmenter used by `mcm-edge eval`")
    _add_train_args(g, steps=1500, batch=32, lr=1e-3, ema=0.99)
    g.add_argument("--channels", default="16,32,64", help="U-Net width per resolution level")
    _add_reference_init(g, "segmenter")
    g.set_defaults(func=cmd_segmenter)

    x = sub.add_parser("estimator", help="train the reference estimator of a dense modality (e.g. depth) used by "
                                         "`mcm-edge eval`")
    _add_train_args(x, steps=1500, batch=32, lr=1e-3, ema=0.99)
    x.add_argument("--modality", default="depth", help="the dense modality to estimate from images")
    x.add_argument("--channels", default="16,32,64", help="U-Net width per resolution level")
    _add_reference_init(x, "estimator of --modality")
    x.set_defaults(func=cmd_estimator)

    v = sub.add_parser("export-vectors", help="write the parity vectors of a model directory (schedule, frame "
                                              "preprocessing, cond) that the Rust tests replay")
    v.add_argument("--model", type=Path, required=True, help="model directory with model.toml")
    v.set_defaults(func=cmd_export_vectors)

    e = sub.add_parser("export-diffusers", help="turn a local diffusers folder into a model directory: a "
                       "text-conditional latent pipeline (SD 1.x/2.x class, LCM, SD-Turbo) into contract 2, a pixel-space "
                       "UNet2DModel into base.onnx + model.toml")
    e.add_argument("source", type=Path, help="local diffusers folder (a pipeline or a bare UNet2DModel)")
    e.add_argument("--out", type=Path, required=True, help="model directory to write")
    e.add_argument("--decoder", type=Path, help="an AutoencoderTiny folder (TAESD) to use instead of the pipeline's vae/")
    e.add_argument("--size", type=int, help="image size in pixels (default: the U-Net's sample_size x the VAE's downsampling)")
    e.set_defaults(func=cmd_export_diffusers)

    t = sub.add_parser("tiny-diffusers", help="write a tiny random diffusers pipeline folder (tests, trying the import)")
    t.add_argument("--kind", choices=["sd", "lcm", "turbo"], default="sd",
                   help="sd: DDIM + classifier-free guidance, AutoencoderKL; lcm: LCMScheduler + guidance embedding, "
                        "TAESD; turbo: Euler on the trailing grid, no guidance, TAESD")
    t.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    t.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    t.set_defaults(func=cmd_tiny_diffusers)

    r = sub.add_parser("export-random", help="a random-weight model directory (tiny fixture, or paper-scale for benchmarks)")
    r.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    r.add_argument("--out", type=Path, required=True, help="model directory to write")
    r.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    r.add_argument("--distilled", choices=["v_prediction", "sample"],
                   help="a base standing in for a 4-step distilled student of this prediction type")
    r.set_defaults(func=cmd_export_random)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        timer = StepTimer.from_env()  # `mcm-train cost` times this run
        args.func(args)
        if timer is not None:
            timer.check_done()
    except (CliError, DataError, FileNotFoundError, ValueError) as e:
        print(f"mcm-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from e


if __name__ == "__main__":
    main()
