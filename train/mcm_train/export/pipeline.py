"""Import of a local diffusers pipeline folder (latent, text-conditional: Stable Diffusion 1.5/2.x
class, BK-SDM, tiny-sd, LCM, SD-Turbo) as a model directory of contract 2 (README "Bring your own
model").

Files written (the model contract, format 2):
    base.onnx          sample f32 [B, c, h, w] (scaled latents), timestep f32 [B],
                       encoder_hidden_states f32 [B, L, D] (and timestep_cond f32 [B, Dc] for an LCM
                       U-Net) -> eps, v or x_0 [B, c, h, w]
    decoder.onnx       latent f32 [B, c, h, w] (scaled, as the U-Net sees it) -> image f32 [B, 3, H, W]
                       in [-1, 1] (the VAE's or TAESD's decoder, 1 / scaling_factor folded in)
    encoder.onnx       image f32 [B, 3, H, W] in [-1, 1] -> latent [B, c, h, w] (the posterior mean times
                       scaling_factor; training only)
    text_encoder.onnx  input_ids int64 [B, L] -> last_hidden_state f32 [B, L, D]
    tokenizer.json     the tokenizer in Hugging Face `tokenizers` format (what the device reads)
    model.toml         format 2: [image], [latent], [text], [schedule] with the scheduler's settings
    test_vectors/      each net's inputs and PyTorch outputs (B = 2), the tokenizer's ids for a set of
                       prompts, and diffusers' own pipeline output for given latents and noise
                       (`pipeline.CASE.*`), replayed by `mcm-edge verify` and the Rust tests

Only local folders are read (no model hub). What the device cannot run is refused with what is
missing: SDXL's added conditioning (`text_embeds`, `time_ids`), a second text encoder, non-square
sizes, and schedulers other than DDIM, Euler (deterministic), LCM and PNDM (sampled with DDIM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..contract.model_toml import read_model_toml, update_model_toml
from ..contract.schedule import PREDICTION_OUTPUTS
from .onnx import ExportError, export_onnx, save_vectors

#: diffusers scheduler classes -> the device's sampler (`[schedule] sampler`). PNDM (the default
#: of Stable Diffusion 1.5's folders) is sampled with DDIM on the same noise schedule and grid.
SAMPLERS = {"DDIMScheduler": "ddim", "PNDMScheduler": "ddim", "EulerDiscreteScheduler": "euler", "LCMScheduler": "lcm"}

#: Prompts of the tokenizer vectors: punctuation, case, unicode (accents, CJK, emoji), numbers,
#: white space runs, and one longer than CLIP's 77 tokens (truncated).
TOKENIZER_PROMPTS = [
    "",
    "a photo of a lake under a blue sky",
    "A Painting, of the FOREST at sunset!!! (oil on canvas) -- 1889",
    "café crème brûlée, naïve façade; Ünïcödé",
    "東京の夜景 🌃 and a 🐱 on a roof",
    "  spaces\tand\nnew lines   everywhere  ",
    "don't stop: it's 3.14 o'clock & we're here",
    " ".join(["mountains and rivers under a sky full of stars"] * 12),
]


class UnsupportedModel(ValueError):
    """The folder holds a model the device cannot run; the message names what is missing."""


@dataclass
class Pipeline:
    """The parts of a local pipeline folder, loaded with diffusers and transformers (eval mode, f32)."""

    folder: Path
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object
    size: int

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def downsampling(self) -> int:
        return self.size // self.latent_size

    @property
    def latent_size(self) -> int:
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0))

    @property
    def time_cond_dim(self) -> int | None:
        dim = self.unet.config.time_cond_proj_dim
        return None if dim is None else int(dim)


def _class_name(folder: Path) -> str | None:
    for name in ("config.json", "scheduler_config.json"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text()).get("_class_name")
    return None


def is_pipeline(source: Path) -> bool:
    """Whether `source` is a pipeline folder with a text-conditional U-Net (`unet/` of class
    UNet2DConditionModel), the input of contract 2."""
    return _class_name(Path(source) / "unet") == "UNet2DConditionModel"


def _check_supported(source: Path) -> None:
    """Refuse, from `unet/config.json` alone (before building anything), what the device cannot run.

    Raises:
        UnsupportedModel: SDXL's added conditioning, class conditioning, non-square or unequal channels.
    """
    cfg = json.loads((source / "unet" / "config.json").read_text())
    added = cfg.get("addition_embed_type")
    if (source / "text_encoder_2").exists() or added is not None:
        raise UnsupportedModel(
            f"{source}: this U-Net takes added conditioning ({added or 'a second text encoder'}: "
            "SDXL's text_embeds and time_ids); the device supports Stable Diffusion 1.x/2.x-class U-Nets "
            "(encoder_hidden_states, optional timestep_cond) only")
    if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds") is not None:
        raise UnsupportedModel(f"{source}: class-conditional U-Nets (class_embed_type {cfg.get('class_embed_type')!r}) "
                               "are not supported")
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and size[0] != size[1]:
        raise UnsupportedModel(f"{source}/unet: sample_size {size}: only square images are supported")
    if cfg.get("in_channels", 4) != cfg.get("out_channels", 4):
        raise UnsupportedModel(f"{source}/unet: in_channels {cfg.get('in_channels')} != out_channels {cfg.get('out_channels')}")


def load_pipeline(source: Path, decoder: Path | None = None, size: int | None = None) -> Pipeline:
    """The parts of the pipeline folder `source`: `unet/`, `vae/` (or the AutoencoderTiny folder
    `decoder`, e.g. TAESD, in its place), `text_encoder/`, `tokenizer/`, `scheduler/`. `size` is
    the image size in pixels (default: the U-Net's sample_size times the VAE's downsampling).

    Raises:
        FileNotFoundError: `source` or a part is missing.
        UnsupportedModel: a part the device cannot run (the message says what).
    """
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = Path(source)
    for part in ("unet", "text_encoder", "tokenizer", "scheduler", *(() if decoder else ("vae",))):
        if not (source / part).is_dir():
            raise FileNotFoundError(f"{source}/{part}: missing (a diffusers pipeline folder has unet/, vae/, "
                                    "text_encoder/, tokenizer/ and scheduler/)")
    _check_supported(source)
    unet = UNet2DConditionModel.from_pretrained(str(source / "unet")).eval().float()
    vae_dir = Path(decoder) if decoder else source / "vae"
    vae_class = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}.get(_class_name(vae_dir) or "")
    if vae_class is None:
        raise UnsupportedModel(f"{vae_dir}: {_class_name(vae_dir)!r}: expected an AutoencoderKL or AutoencoderTiny (TAESD)")
    vae = vae_class.from_pretrained(str(vae_dir)).eval().float()
    if _class_name(source / "text_encoder") not in (None, "CLIPTextModel"):
        raise UnsupportedModel(f"{source}/text_encoder: {_class_name(source / 'text_encoder')}: expected a CLIPTextModel")
    text_encoder = CLIPTextModel.from_pretrained(str(source / "text_encoder")).eval().float()
    tokenizer = CLIPTokenizer.from_pretrained(str(source / "tokenizer"))
    scheduler = _load_scheduler(source / "scheduler")
    down = 2 ** (len(vae.config.block_out_channels) - 1) if vae_class is AutoencoderKL else \
        2 ** (len(vae.config.decoder_block_out_channels) - 1)
    pipe = Pipeline(source, unet, vae, text_encoder, tokenizer, scheduler, 0)
    pipe.size = int(size or pipe.latent_size * down)
    if pipe.size % down:
        raise UnsupportedModel(f"--size {pipe.size}: must be a multiple of the VAE's downsampling {down}")
    if int(vae.config.latent_channels) != pipe.latent_channels:
        raise UnsupportedModel(f"{vae_dir}: latent_channels {vae.config.latent_channels}, the U-Net takes {pipe.latent_channels}")
    if int(text_encoder.config.hidden_size) != int(unet.config.cross_attention_dim):
        raise UnsupportedModel(f"{source}: the text encoder's hidden size {text_encoder.config.hidden_size} is not the "
                               f"U-Net's cross_attention_dim {unet.config.cross_attention_dim}")
    pipe.unet.config.sample_size = pipe.size // down  # the latent grid of the chosen image size
    return pipe


def _load_scheduler(folder: Path) -> object:
    import diffusers

    name = _class_name(folder)
    if name not in SAMPLERS:
        raise UnsupportedModel(f"{folder}: {name}: the device samples with DDIM, Euler or LCM "
                               f"(schedulers {', '.join(SAMPLERS)})")
    sched = getattr(diffusers, name).from_pretrained(str(folder))
    cfg = sched.config
    if cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas") or cfg.get("use_beta_sigmas"):
        raise UnsupportedModel(f"{folder}: Karras/exponential/beta sigmas are not supported (plain Euler only)")
    if cfg.get("thresholding"):
        raise UnsupportedModel(f"{folder}: dynamic thresholding is not supported")
    if cfg.get("trained_betas") is not None:
        raise UnsupportedModel(f"{folder}: trained_betas are not supported "
                               "(beta_schedule linear, scaled_linear or squaredcos_cap_v2)")
    if name == "PNDMScheduler":  # DDIM on the same grid: PNDM's own pseudo-numerical steps are not implemented
        sched = diffusers.DDIMScheduler.from_config({**cfg, "clip_sample": False,
                                                     "set_alpha_to_one": cfg.get("set_alpha_to_one", False)})
    return sched


def schedule_section(sched: object, source_class: str) -> dict:
    """`[schedule]` of contract 2 from a diffusers scheduler: the noise schedule, the prediction
    type, the sampler (`SAMPLERS`) and its grid settings (diffusers' names and defaults)."""
    cfg = sched.config
    sampler = SAMPLERS[source_class]
    section = {"beta_schedule": cfg.beta_schedule, "beta_start": float(cfg.beta_start), "beta_end": float(cfg.beta_end),
               "num_train_timesteps": int(cfg.num_train_timesteps), "prediction_type": cfg.prediction_type,
               "sampler": sampler, "timestep_spacing": cfg.get("timestep_spacing", "leading"),
               "steps_offset": int(cfg.get("steps_offset", 0)),
               "set_alpha_to_one": bool(cfg.get("set_alpha_to_one", True)), "imported_from": source_class}
    if sampler == "lcm":
        section.update(original_inference_steps=int(cfg.original_inference_steps),
                       timestep_scaling=float(cfg.timestep_scaling), timestep_spacing="lcm")
    if cfg.get("clip_sample") and sampler != "euler":
        section["clip_sample_range"] = float(cfg.get("clip_sample_range", 1.0))
    return section


def default_guidance_scale(sched: object) -> float:
    """The guidance scale the model is usually sampled at (`[text] guidance_scale`): 8.5 for an LCM
    (its guidance embedding), 0 for Euler on the trailing grid (SD-Turbo: no classifier-free
    guidance), else diffusers' default 7.5."""
    name, cfg = type(sched).__name__, sched.config
    if name == "LCMScheduler":
        return 8.5
    if name == "EulerDiscreteScheduler" and cfg.get("timestep_spacing") == "trailing":
        return 0.0
    return 7.5


class _Base(nn.Module):
    """`(sample, timestep f32 [B], encoder_hidden_states[, timestep_cond]) -> the U-Net's prediction`."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond).sample


class _Decoder(nn.Module):
    """Scaled latent -> image in [-1, 1], as the pipelines decode (`vae.decode(z / scaling_factor)`)."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae, self.scaling_factor = vae, scaling_factor

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scaling_factor).sample


class _Encoder(nn.Module):
    """Image in [-1, 1] -> scaled latent: the posterior mean (AutoencoderKL) or TAESD's latents, times scaling_factor."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae, self.scaling_factor = vae, scaling_factor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.vae.encode(image)
        latent = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents
        return latent * self.scaling_factor


class _TextEncoder(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids)[0]


def tokenize(tokenizer: object, prompts: list[str], max_length: int) -> torch.Tensor:
    """Token ids int64 [len(prompts), max_length], as the pipelines tokenize (padded to
    `max_length`, truncated, with CLIP's start and end tokens)."""
    return tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids


def _export_net(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, stem: str, out_dir: Path) -> torch.Tensor:
    """Export `module` to `STEM.onnx` (dynamic batch) with its test vectors; returns the PyTorch output."""
    export_onnx(module, inputs, [output], out_dir / f"{stem}.onnx")
    with torch.no_grad():
        result = module(*inputs.values())
    save_vectors(out_dir, stem, {**inputs, output: result})
    _check_onnx(out_dir / f"{stem}.onnx", inputs, result)
    return result


def _check_onnx(path: Path, inputs: dict[str, torch.Tensor], expected: torch.Tensor) -> None:
    """The exported file gives PyTorch's output through onnxruntime (within 1e-4 of its scale).

    Raises:
        ExportError: it does not.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    diff = float(np.abs(got - expected.numpy()).max())
    if diff > 1e-4 * max(1.0, float(expected.abs().max())):
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {diff:.3g}")


def export_pipeline(source: Path, out_dir: Path, decoder: Path | None = None, size: int | None = None) -> dict:
    """Export the pipeline folder `source` to `out_dir` in contract 2 (module doc); returns model.toml.

    Raises:
        FileNotFoundError: a part is missing.
        UnsupportedModel: the device cannot run the model (the message names what is missing).
        ExportError: an exported graph disagrees with PyTorch.
    """
    pipe = load_pipeline(source, decoder, size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(5)
    # L: the tokenizer's length, bounded by the text encoder's positions (a tokenizer_config without
    # model_max_length reports a huge sentinel)
    L = int(min(pipe.tokenizer.model_max_length, pipe.text_encoder.config.max_position_embeddings))
    c, h = pipe.latent_channels, pipe.size // pipe.downsampling
    D = int(pipe.text_encoder.config.hidden_size)
    ids = tokenize(pipe.tokenizer, TOKENIZER_PROMPTS[1:3], L)
    hidden = _export_net(_TextEncoder(pipe.text_encoder), {"input_ids": ids}, "last_hidden_state", "text_encoder", out_dir)
    base_inputs = {"sample": torch.randn(2, c, h, h, generator=gen), "timestep": torch.tensor([17.0, 733.0]),
                   "encoder_hidden_states": hidden}
    if pipe.time_cond_dim:
        base_inputs["timestep_cond"] = torch.randn(2, pipe.time_cond_dim, generator=gen)
    prediction = pipe.scheduler.config.prediction_type
    _export_net(_Base(pipe.unet), base_inputs, PREDICTION_OUTPUTS[prediction], "base", out_dir)
    latent = torch.randn(2, c, h, h, generator=gen)
    _export_net(_Decoder(pipe.vae, pipe.scaling_factor), {"latent": latent}, "image", "decoder", out_dir)
    image = torch.rand(2, 3, pipe.size, pipe.size, generator=gen) * 2 - 1
    _export_net(_Encoder(pipe.vae, pipe.scaling_factor), {"image": image}, "latent", "encoder", out_dir)
    pipe.tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    _write_tokenizer_vectors(pipe, out_dir, L)
    source_class = _class_name(Path(source) / "scheduler") or ""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    provenance = {"dataset": f"diffusers import of {Path(source).resolve()}"}
    (out_dir / "model.toml").unlink(missing_ok=True)  # a new base: nothing of an older model.toml (its MCM) stays
    update_model_toml(
        out_dir, format=2,
        image={"size": pipe.size, "channels": 3, "value_range": [-1.0, 1.0]},
        latent={"channels": c, "downsampling": pipe.downsampling, "scaling_factor": pipe.scaling_factor,
                "vae": type(pipe.vae).__name__,
                "decoder": {"file": "decoder.onnx", "parameters": count(pipe.vae.decoder)},
                "encoder": {"file": "encoder.onnx", "parameters": count(pipe.vae.encoder)}},
        text={"file": "text_encoder.onnx", "tokenizer": "tokenizer.json", "max_length": L, "hidden_size": D,
              "pad_token_id": int(pipe.tokenizer.pad_token_id), "guidance_scale": default_guidance_scale(pipe.scheduler),
              "parameters": count(pipe.text_encoder)},
        schedule=schedule_section(pipe.scheduler, source_class),
        base={"file": "base.onnx", "parameters": count(pipe.unet), **provenance,
              **({"timestep_cond": pipe.time_cond_dim} if pipe.time_cond_dim else {})},
    )
    from .parity import write_parity_vectors
    from .pipeline_vectors import write_pipeline_vectors

    write_pipeline_vectors(pipe, out_dir)
    write_parity_vectors(out_dir)
    from .flops import record_flops

    if record_flops(out_dir) is None:
        print(f"note: no mcm-edge binary found (MCM_EDGE, PATH, target/release): the FLOP figures are left out of "
              f"{out_dir}/model.toml; `mcm-edge info {out_dir}` shows them")
    return read_model_toml(out_dir)


def _write_tokenizer_vectors(pipe: Pipeline, out_dir: Path, max_length: int) -> None:
    """`tokenizer.prompts.json` and `tokenizer.input_ids.npy` (int64 [N, L]): the Python tokenizer's
    ids for `TOKENIZER_PROMPTS`, which the device's tokenizer must reproduce."""
    vec = out_dir / "test_vectors"
    vec.mkdir(parents=True, exist_ok=True)
    (vec / "tokenizer.prompts.json").write_text(json.dumps(TOKENIZER_PROMPTS, ensure_ascii=False, indent=1) + "\n")
    np.save(vec / "tokenizer.input_ids.npy", tokenize(pipe.tokenizer, TOKENIZER_PROMPTS, max_length).numpy().astype(np.int64))
