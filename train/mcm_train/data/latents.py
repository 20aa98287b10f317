"""What MCM training on a latent, text-conditional base (contract 2) needs from a dataset folder
besides images and maps: the images' latents, encoded once with the model's `encoder.onnx` and
cached beside the data, and each image's prompt.

Captions (optional; an image without one gets the empty prompt, as classifier-free guidance's
unconditional pass): `DIR/captions.json` (`{"STEM": "a photo of ...", ...}`) or `DIR/captions.csv`
(columns `stem` and `caption`, with a header row).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from .classes import DataError
from .folder import Dataset

#: Where encoded latents are kept, inside the dataset folder.
CACHE_DIR = ".mcm-latents"


def load_captions(root: Path, stems: list[str]) -> list[str]:
    """The caption of each stem from `captions.json` or `captions.csv` in `root` ("" where none).

    Raises:
        DataError: both files exist, or one is unreadable or malformed (the message names it).
    """
    root = Path(root)
    js, cs = root / "captions.json", root / "captions.csv"
    if js.exists() and cs.exists():
        raise DataError(f"{root}: both captions.json and captions.csv; keep one")
    table: dict[str, str] = {}
    try:
        if js.exists():
            table = json.loads(js.read_text(encoding="utf-8"))
            if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
                raise DataError(f"{js}: expected an object of image stem -> caption text")
        elif cs.exists():
            with cs.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"stem", "caption"} <= set(reader.fieldnames):
                    raise DataError(f"{cs}: needs a header row with the columns stem and caption")
                table = {row["stem"]: row["caption"] or "" for row in reader}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DataError(f"{js if js.exists() else cs}: not readable: {e}") from e
    unknown = sorted(set(table) - set(stems))
    if unknown and len(unknown) == len(table):
        raise DataError(f"{root}: no caption names an image of images/ (e.g. {unknown[0]!r})")
    return [table.get(s, "") for s in stems]


def encode_latents(data: Dataset, root: Path, encoder: Path, threads: int = 2, batch: int = 8) -> np.ndarray:
    """The latents of every image and of its horizontal flip, f32 [N, 2, c, h, w] (the flip is
    encoded, not the latent flipped: an autoencoder is not exactly flip-equivariant), through
    `encoder` (`image` [B, 3, H, W] in [-1, 1] -> `latent`, onnxruntime on the CPU). Kept in
    `root/.mcm-latents/` under a key of the encoder's and the images' bytes, and reused.

    Raises:
        FileNotFoundError: `encoder` does not exist.
    """
    import onnxruntime as ort

    encoder = Path(encoder)
    if not encoder.exists():
        raise FileNotFoundError(f"{encoder}: no encoder (a contract-2 model directory has encoder.onnx)")
    digest = hashlib.sha256(encoder.read_bytes())
    digest.update(np.ascontiguousarray(data.images).tobytes())
    cache = Path(root) / CACHE_DIR / f"{digest.hexdigest()[:24]}.npy"
    if cache.exists():
        return np.load(cache)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(encoder), opts, providers=["CPUExecutionProvider"])
    out = []
    for images in (data.images, data.images[..., ::-1]):
        images = np.ascontiguousarray(images, dtype=np.float32)
        out.append(np.concatenate([session.run(["latent"], {"image": images[i:i + batch]})[0]
                                   for i in range(0, len(images), batch)]))
    latents = np.stack(out, axis=1).astype(np.float32)
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, latents)
    return latents
