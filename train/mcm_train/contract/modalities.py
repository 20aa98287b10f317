"""What the trainer and the device agree on about modalities: their kinds, their `model.toml`
entries and the layout of `cond` (README "Model contract"; the device's `src/contract/`).

`cond` [B, K, H, W] stacks, per modality in `model.toml` order, its map channels followed by one
presence channel (1 where the modality is given, 0 where it is absent or dropped, maps included;
Ham et al. 2023, Sec. 3.3). K = sum over modalities of (channels + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: The kinds of modality. `segmentation`: class map, one-hot over `channels` classes; `sketch`:
#: one stroke channel in [0, 1]; `dense`: `channels` (1-4) continuous values in `value_range`
#: (depth, normals, heatmaps), resized smoothly on the device.
MODALITY_KINDS = ("segmentation", "sketch", "dense")


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class: `name` and its palette `color` (RGB, 0-255)."""

    name: str
    color: tuple[int, int, int]


@dataclass
class ModalitySpec:
    """One conditioning modality and its slice of `cond` [B, K, H, W].

    Attributes:
        name: the name in topics (`frame/<name>`), requests and the dataset folder.
        kind: one of `MODALITY_KINDS`.
        channels: map channels: classes of a segmentation, 1 for a sketch, 1-4 for a dense map.
        classes: `{"name", "color"}` per class of a segmentation (id = index).
        value_range: [lo, hi] of a dense map's values in `cond` (a file's 0 maps to lo, its
            maximum, 255 or 65535, to hi).
    """

    name: str
    kind: str
    channels: int
    classes: list[dict] = field(default_factory=list)
    value_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(f"modality {self.name!r}: unknown kind {self.kind!r} ({', '.join(MODALITY_KINDS)})")
        if self.kind == "sketch" and self.channels != 1:
            raise ValueError(f"modality {self.name!r}: a sketch has 1 channel, not {self.channels}")
        if self.kind == "dense" and not 1 <= self.channels <= 4:
            raise ValueError(f"modality {self.name!r}: a dense map has 1 to 4 channels, not {self.channels}")
        if self.kind == "segmentation" and self.classes and len(self.classes) != self.channels:
            raise ValueError(f"modality {self.name!r}: {self.channels} channels but {len(self.classes)} classes")
        lo, hi = (float(v) for v in self.value_range)
        if not lo < hi:
            raise ValueError(f"modality {self.name!r}: value_range {list(self.value_range)} must be increasing")
        self.value_range = (lo, hi)

    @property
    def width(self) -> int:
        """Channels of this modality in `cond`: its maps plus the presence channel."""
        return self.channels + 1

    def class_infos(self) -> list[ClassInfo]:
        """The classes as `ClassInfo`s (segmentation)."""
        return [ClassInfo(str(c["name"]), tuple(int(v) for v in c["color"])) for c in self.classes]

    def to_toml(self) -> dict:
        """The `[[modalities]]` entry of model.toml (keys the device reads)."""
        entry: dict = {"name": self.name, "kind": self.kind, "channels": self.channels}
        if self.kind == "segmentation":
            entry["classes"] = [{"name": c["name"], "color": list(c["color"])} for c in self.classes]
        if self.kind == "dense":
            entry["value_range"] = list(self.value_range)
        return entry

    @staticmethod
    def from_toml(entry: dict) -> ModalitySpec:
        """A `[[modalities]]` entry of model.toml (or of a dataset manifest) as a spec.

        Raises:
            ValueError: a key is missing or a value does not fit the kind.
            KeyError: `name` or `kind` is missing.
        """
        kind = entry["kind"]
        channels = entry.get("channels", len(entry.get("classes", [])) if kind == "segmentation" else 1)
        return ModalitySpec(str(entry["name"]), kind, int(channels), list(entry.get("classes", [])),
                            tuple(entry.get("value_range", (0.0, 1.0))))


def cond_channels(modalities: list[ModalitySpec]) -> int:
    """K, the total channels of `cond` for these modalities (maps + one presence channel each)."""
    return sum(m.width for m in modalities)


def build_cond(modalities: list[ModalitySpec], maps: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """Stack the conditioning tensor `cond` [B, K, H, W] (layout in the module doc).

    `maps[name]`: a segmentation's class ids int64 [B, H, W]; a sketch's strokes [B, 1, H, W] in
    [0, 1]; a dense map's values [B, C, H, W] in its value range. `present` bool [B, M], one column
    per modality: where False its maps and its presence channel are zero.

    Raises:
        ValueError: a modality's maps are missing.
    """
    parts = []
    for j, m in enumerate(modalities):
        if m.name not in maps:
            raise ValueError(f"modality {m.name!r}: the dataset has no {m.name} maps")
        x = maps[m.name]
        x = F.one_hot(x, m.channels).permute(0, 3, 1, 2).float() if m.kind == "segmentation" else x.float()
        p = present[:, j].float().view(-1, 1, 1, 1)
        parts += [x * p, p.expand(-1, 1, *x.shape[-2:])]
    return torch.cat(parts, dim=1)
