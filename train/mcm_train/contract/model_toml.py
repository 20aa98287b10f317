"""`model.toml`: reading and updating the model contract file (README "Model contract")."""

from __future__ import annotations

import tomllib
from pathlib import Path

import tomli_w

from .modalities import ModalitySpec

FORMAT_VERSION = 1


def read_model_toml(out_dir: Path) -> dict:
    """The model.toml of `out_dir` as a dict, or {} when there is none."""
    path = out_dir / "model.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


def update_model_toml(out_dir: Path, **sections: object) -> dict:
    """Replace the given top-level sections of `out_dir/model.toml` (creating it), keep the others."""
    doc = read_model_toml(out_dir)
    doc.setdefault("format", FORMAT_VERSION)  # contract 2 directories keep their format
    doc.update({k: v for k, v in sections.items() if v is not None})
    (out_dir / "model.toml").write_text(_HEADER + tomli_w.dumps(doc))
    return doc


def modalities_from_toml(doc: dict) -> list[ModalitySpec]:
    """The `[[modalities]]` of a model.toml as `ModalitySpec`s, in `cond` order."""
    return [ModalitySpec.from_toml(m) for m in doc.get("modalities", [])]


_HEADER = """\
# Model contract for the mcm-edge device (written by mcm-train; see README "Model contract").
# base.onnx: sample f32 [B,C,H,W], timestep f32 [B] -> eps f32 [B,C,H,W]
# mcm.onnx: sample, eps [B,C,H,W], cond [B,K,H,W], timestep [B] -> gamma, beta [B,C,H,W]
#   cond stacks, per modality in the order below, `channels` map channels then one presence channel.
# segmenter.onnx: image [B,3,H,W] in [-1,1] -> logits [B,classes,H,W], features [B,F,1,1] (evaluation only)
# format 2 (latent, text-conditional; README "Contract 2"): base.onnx also takes encoder_hidden_states [B,L,D]
#   (and timestep_cond [B,Dc]) on latents [B,c,h,w]; decoder.onnx: latent -> image [B,3,H,W];
#   text_encoder.onnx: input_ids int64 [B,L] -> last_hidden_state [B,L,D]; cond stays at image size.

"""


