"""Pipeline vectors: diffusers' own pipeline output for a prompt, steps and guidance, with the
initial latents and the sampler's noise given, so that the device (`mcm-edge verify`, the Rust
tests) can replay the whole generation through tract and compare the decoded images.

Per case `CASE` under `test_vectors/`:
    pipeline.CASE.json           prompt, negative_prompt, guidance_scale, steps
    pipeline.CASE.latents.npy    x_T f32 [1, c, h, w] (unit normal; Euler's init_noise_sigma is the pipeline's)
    pipeline.CASE.noise.npy      f32 [n, 1, c, h, w]: the noise the sampler adds, step by step (LCM
                                 adds fresh noise after every step but the last; n = 0 for DDIM, Euler)
    pipeline.CASE.timesteps.npy  int64 [steps]: the scheduler's timesteps
    pipeline.CASE.image.npy      f32 [1, 3, H, W] in [0, 1]: the pipeline's decoded image (`output_type="np"`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .pipeline import Pipeline

#: Seed of the latents and the sampler noise of every case.
SEED = 11


def _cases(pipe: Pipeline) -> dict[str, dict]:
    """Two cases per pipeline: its usual settings (classifier-free guidance with a negative prompt
    where the U-Net has no guidance embedding; LCM's guidance embedding otherwise) and a cheaper
    one without guidance."""
    sampler = type(pipe.scheduler).__name__
    lcm = sampler == "LCMScheduler"
    guided = {"prompt": "a photo of a lake under a blue sky", "negative_prompt": "" if lcm else "blurry, grey",
              "guidance_scale": 8.5 if lcm else 7.5, "steps": 4 if lcm else 3}
    plain = {"prompt": "snow on the mountains", "negative_prompt": "", "guidance_scale": 1.0 if lcm else 0.0,
             "steps": 2}
    return {"guided": guided, "plain": plain}


def _pipeline(pipe: Pipeline) -> object:
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "tokenizer": pipe.tokenizer,
             "scheduler": pipe.scheduler, "safety_checker": None, "feature_extractor": None,
             "requires_safety_checker": False}
    cls = LatentConsistencyModelPipeline if type(pipe.scheduler).__name__ == "LCMScheduler" else StableDiffusionPipeline
    p = cls(**parts)
    p.set_progress_bar_config(disable=True)
    return p


def write_pipeline_vectors(pipe: Pipeline, out_dir: Path) -> list[str]:
    """Run diffusers' pipeline for each case (module doc) and write its vectors; returns the case names."""
    runner = _pipeline(pipe)
    c, h = pipe.latent_channels, pipe.size // pipe.downsampling
    vec = Path(out_dir) / "test_vectors"
    vec.mkdir(parents=True, exist_ok=True)
    lcm = type(pipe.scheduler).__name__ == "LCMScheduler"
    for name, case in _cases(pipe).items():
        latents = torch.randn(1, c, h, h, generator=torch.Generator().manual_seed(SEED))
        # LCM draws one noise tensor per step but the last from the generator the pipeline gets
        # (the latents are given, so nothing else draws from it): the same draws, replayed here.
        noise_gen = torch.Generator().manual_seed(SEED + 1)
        n = case["steps"] - 1 if lcm else 0
        noise = torch.stack([torch.randn(1, c, h, h, generator=noise_gen) for _ in range(n)]) if n else \
            torch.zeros(0, 1, c, h, h)
        kwargs = {} if lcm else {"negative_prompt": case["negative_prompt"] or None}
        with torch.no_grad():
            image = runner(case["prompt"], height=pipe.size, width=pipe.size, num_inference_steps=case["steps"],
                           guidance_scale=case["guidance_scale"], latents=latents.clone(),
                           generator=torch.Generator().manual_seed(SEED + 1), output_type="np", **kwargs).images
        (vec / f"pipeline.{name}.json").write_text(json.dumps(case, indent=1) + "\n")
        np.save(vec / f"pipeline.{name}.latents.npy", latents.numpy().astype(np.float32))
        np.save(vec / f"pipeline.{name}.noise.npy", noise.numpy().astype(np.float32))
        np.save(vec / f"pipeline.{name}.timesteps.npy", runner.scheduler.timesteps.numpy().astype(np.int64))
        np.save(vec / f"pipeline.{name}.image.npy", np.ascontiguousarray(image.transpose(0, 3, 1, 2)).astype(np.float32))
    return list(_cases(pipe))
