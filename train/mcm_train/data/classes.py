"""Class palettes (`config/classes.toml` or a dataset manifest) and the data error type."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ..contract.modalities import ClassInfo

REPO_ROOT = Path(__file__).resolve().parents[3]


DEFAULT_CLASSES = REPO_ROOT / "config" / "classes.toml"


class DataError(ValueError):
    """A dataset file is missing, unreadable or does not match the palette / size."""


def load_classes(path: Path = DEFAULT_CLASSES) -> list[ClassInfo]:
    """Read the class list (`[[classes]]` with `name`, `color`) from a TOML file.

    Raises:
        DataError: the file is missing or a class lacks a name or a 3-value colour.
    """
    try:
        table = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: cannot read class list: {e}") from e
    classes = []
    for i, c in enumerate(table.get("classes", [])):
        color = c.get("color")
        if "name" not in c or not isinstance(color, list) or len(color) != 3:
            raise DataError(f"{path}: class {i} needs `name` and `color = [r, g, b]`")
        classes.append(ClassInfo(str(c["name"]), (int(color[0]), int(color[1]), int(color[2]))))
    if len(classes) < 2:
        raise DataError(f"{path}: at least 2 classes are needed, found {len(classes)}")
    return classes


