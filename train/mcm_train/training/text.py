"""Prompt embeddings of a text-conditional base (contract 2, `[text]`), computed the way the device
computes them: `tokenizer.json` through the Hugging Face `tokenizers` library (truncated and padded
to `max_length` with `pad_token_id`) and `text_encoder.onnx` through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class TextEmbedder:
    """`embed(prompts) -> f32 [N, L, D]` for the model directory `model_dir` (its `[text]` section)."""

    def __init__(self, model_dir: Path, text: dict, threads: int = 2) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.max_length, self.hidden_size = int(text["max_length"]), int(text["hidden_size"])
        self.tokenizer = Tokenizer.from_file(str(model_dir / text["tokenizer"]))
        self.tokenizer.enable_truncation(self.max_length)
        pad = int(text["pad_token_id"])
        self.tokenizer.enable_padding(length=self.max_length, pad_id=pad, pad_token=self.tokenizer.id_to_token(pad))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model_dir / text["file"]), opts, providers=["CPUExecutionProvider"])

    def token_ids(self, prompts: list[str]) -> np.ndarray:
        """int64 [N, L]."""
        return np.array([e.ids for e in self.tokenizer.encode_batch(prompts)], dtype=np.int64)

    def embed(self, prompts: list[str]) -> np.ndarray:
        """The text embeddings `last_hidden_state`, f32 [N, L, D], one distinct prompt at a time."""
        unique = sorted(set(prompts))
        table = {p: self.session.run(["last_hidden_state"], {"input_ids": self.token_ids([p])})[0][0] for p in unique}
        return np.stack([table[p] for p in prompts]).astype(np.float32) if prompts else \
            np.zeros((0, self.max_length, self.hidden_size), np.float32)


def guidance_embedding(w: float, dim: int) -> np.ndarray:
    """LCM's guidance-scale embedding of `w` (the guidance scale - 1), f32 [dim] (diffusers'
    `get_guidance_scale_embedding`, as the device's `guidance_scale_embedding`)."""
    half = dim // 2
    freqs = np.exp(-np.arange(half, dtype=np.float32) * np.float32(np.log(10000.0) / max(half - 1, 1)))
    arg = np.float32(1000.0 * w) * freqs
    out = np.concatenate([np.sin(arg), np.cos(arg)])
    return np.pad(out, (0, dim - 2 * half)).astype(np.float32)
