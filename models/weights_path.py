"""Where weight files are found: the shipped ones next to this package, or a path the config names.

A predictor config's ``weights`` is a path, or the bare name of a file shipped in ``models/weights/``
(``oamn_osnet_x0_25_peta.pt``), which is found relative to the installed package, not the working
directory. A missing file is a config error (``FileNotFoundError`` naming the config key and the path).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["WEIGHTS_DIR", "shipped_weights", "resolve_weights_path", "require_file", "sibling_key"]

#: the shipped weight files (``models/weights/`` of the installed package)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_weights(name: str) -> Path:
    """``models/weights/<name>`` of the installed package (whether or not the file exists)."""
    if not name or Path(name).name != name:
        raise ValueError(f"shipped weights are named by a bare file name, got {name!r}")
    return WEIGHTS_DIR / name


def resolve_weights_path(value: str | Path) -> Path:
    """``value`` as given if it exists; else the shipped file of that name when ``value`` is a bare file
    name (or ``models/weights/<name>``, as the READMEs write it, from another working directory);
    else ``value`` unchanged, so the caller's error names what the config said."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    parts = Path(value).parts
    if len(parts) == 1 or (len(parts) == 3 and parts[:2] == ("models", "weights")):
        shipped = WEIGHTS_DIR / parts[-1]
        if shipped.is_file():
            return shipped
    return path


def require_file(value: str | Path, key: str = "weights") -> Path:
    """The resolved path of an existing file, or ``FileNotFoundError("<key> '<value>' does not exist")``
    (the stage runner reports FileNotFoundError as a config error)."""
    path = resolve_weights_path(value)
    if path.exists() and not path.is_file():
        raise FileNotFoundError(f"{key} '{value}' is not a file")
    if not path.is_file():
        where = f" (nor in {WEIGHTS_DIR})" if len(Path(value).parts) == 1 else ""
        raise FileNotFoundError(f"{key} '{value}' does not exist{where}")
    return path


def sibling_key(key: str, name: str) -> str:
    """The config key ``name`` next to ``key``: ``sibling_key("grade.weights", "onnx") == "grade.onnx"``."""
    head, dot, _ = key.rpartition(".")
    return f"{head}{dot}{name}"
