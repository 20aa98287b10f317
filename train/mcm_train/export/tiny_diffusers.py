"""Tiny random diffusers pipelines, built locally (no model hub here): the stand-ins for the real
latent, text-conditional models (Stable Diffusion 1.5-class, LCM, SD-Turbo) in the tests of
`export-diffusers`, `mcm-train mcm` on a contract-2 directory and the device.

Each is a real pipeline folder as `save_pretrained` writes it (`model_index.json`, `unet/`, `vae/`,
`text_encoder/`, `tokenizer/` with `vocab.json` + `merges.txt`, `scheduler/`), made of diffusers'
and transformers' own classes at test size (diffusers' test configs: two U-Net blocks of 4 and 8
channels, `cross_attention_dim = 8`, `norm_num_groups = 2`, a 4-block VAE, a 2-layer CLIP text
model of width 8). The weights are random (seeded): the images are noise, only shapes and
numerics mean anything.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import torch

#: Pipeline kinds: `sd` (Stable Diffusion 1.5's DDIM settings, an AutoencoderKL, classifier-free
#: guidance), `lcm` (a Latent Consistency Model: `time_cond_proj_dim`, LCMScheduler, TAESD's
#: AutoencoderTiny), `turbo` (SD-Turbo's EulerDiscreteScheduler on the trailing grid, no guidance, TAESD).
KINDS = ("sd", "lcm", "turbo")

#: Words the tiny tokenizer's merges are learnt from (a BPE over byte-level characters, as CLIP's).
_CORPUS = """a photo of a lake under a blue sky with mountains and green grass a painting of a forest at sunset
snow on the mountains a river through the valley clouds over the sea a field of flowers in spring
a road between trees beach sand and water at dawn a city street at night rain on the window
a castle on a hill the desert under the stars autumn leaves in the park a boat on the water"""

#: Text width (CLIP's hidden size) and length of the tiny text encoder.
HIDDEN_SIZE, MAX_LENGTH = 8, 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _learn_bpe(corpus: str, merges: int) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style vocabulary (256 byte characters, the same with `</w>`, the learnt merges, then
    `<|startoftext|>` and `<|endoftext|>`) and its merges, learnt greedily from `corpus`."""
    table = _bytes_to_unicode()
    alphabet = list(table.values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    words = collections.Counter(re.findall(r"[a-z]+", corpus.lower()))
    split = {w: [table[b] for b in w.encode()[:-1]] + [table[w.encode()[-1]] + "</w>"] for w in words}
    learnt: list[str] = []
    for _ in range(merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for w, n in words.items():
            s = split[w]
            pairs.update({(a, b): n for a, b in zip(s, s[1:], strict=False)})
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        learnt.append(f"{a} {b}")
        vocab.append(a + b)
        for w, s in split.items():
            i, out = 0, []
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, learnt


def tiny_tokenizer(folder: Path):  # noqa: ANN201 (transformers' CLIPTokenizer)
    """Write a tiny CLIP tokenizer (`vocab.json`, `merges.txt`, as in a real pipeline's
    `tokenizer/`) to `folder` and return it loaded (`transformers.CLIPTokenizer`, max length 77)."""
    import json

    from transformers import CLIPTokenizer

    vocab, merges = _learn_bpe(_CORPUS, 160)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MAX_LENGTH)


def _unet(time_cond_proj_dim: int | None):  # noqa: ANN202
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN_SIZE, attention_head_dim=2, norm_num_groups=2, time_cond_proj_dim=time_cond_proj_dim,
    )


def _vae(kind: str):  # noqa: ANN202
    from diffusers import AutoencoderKL, AutoencoderTiny

    if kind == "sd":  # 4 blocks: 8x downsampling, as SD's VAE
        return AutoencoderKL(block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             norm_num_groups=2, sample_size=64)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)


def _scheduler(kind: str):  # noqa: ANN202
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    sd = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    if kind == "sd":
        return DDIMScheduler(**sd, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    if kind == "lcm":
        return LCMScheduler(**sd, clip_sample=False, set_alpha_to_one=True, original_inference_steps=50)
    return EulerDiscreteScheduler(**sd, timestep_spacing="trailing", steps_offset=1)


def write_tiny_pipeline(out: Path, kind: str = "sd", seed: int = 0) -> Path:
    """Write a tiny random pipeline folder of `kind` (`KINDS`) for 64x64 images (8x8x4 latents) to
    `out` and return `out`.

    Raises:
        ValueError: unknown `kind`.
    """
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    if kind not in KINDS:
        raise ValueError(f"pipeline kind {kind!r}: expected one of {', '.join(KINDS)}")
    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(out / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN_SIZE, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=2, max_position_embeddings=MAX_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    parts = {"unet": _unet(8 if kind == "lcm" else None).eval(), "vae": _vae(kind).eval(), "text_encoder": text_encoder,
             "tokenizer": tokenizer, "scheduler": _scheduler(kind)}
    if kind == "lcm":
        pipe = LatentConsistencyModelPipeline(**parts, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(out))
    return out
