"""A random-weight pipeline folder with Stable Diffusion 1.5's published configs (U-Net 860 M
parameters, ViT-L/14 CLIP text encoder, the SD VAE), built locally (no download) to measure what
a real SD-class model costs on the device: `export-diffusers` at full size (ONNX above 2 GB, so
external data), then `mcm-edge info` (parameters, tract's FLOPs per step) and `mcm-edge verify`.

    .venv/bin/python bench/sd15_scale.py OUT_DIR   # writes OUT_DIR/pipeline, OUT_DIR/model

`--half` builds a model of about 1 GB of weights instead (the memory figure of the README): the
same architectures with half the U-Net's widths (about 215 M parameters) and 2 of the text
encoder's 12 layers; the VAE stays full size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from mcm_train.export.tiny_diffusers import tiny_tokenizer


def write_sd15_folder(out: Path, half: bool = False) -> Path:
    """Write a random-weight SD 1.5 pipeline folder to `out` (`half`: U-Net widths halved, a
    2-layer text encoder); returns `out`."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(out / "tokenizer")  # the vocabulary is a test one; the text encoder is full size
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(160, 320, 640, 640) if half else (320, 640, 1280, 1280),
                                layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, sample_size=512,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=2 if half else 12, max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer,
                                   scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    (out / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--half", action="store_true", help="about 1 GB of weights instead of 4.3 GB")
    args = parser.parse_args()
    folder = write_sd15_folder(args.out / "pipeline", half=args.half)
    print("wrote", folder)
