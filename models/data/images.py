"""Which files are images: the one suffix list every dataset reader and folder scan uses."""

from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "is_image", "image_files"]

#: file suffixes read as images (compared lower-case)
IMAGE_SUFFIXES = frozenset({".bmp", ".jpg", ".jpeg", ".png"})


def is_image(path: str | Path) -> bool:
    """Whether ``path`` names an image by its suffix (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(*folders: str | Path) -> list[Path]:
    """Every image under ``folders`` (recursively), sorted: a deterministic order for any file system."""
    return sorted(p for folder in folders for p in Path(folder).rglob("*") if is_image(p))
