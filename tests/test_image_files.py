"""``models.data.images``: the one rule for which files are images, and a sorted folder scan."""

from __future__ import annotations

from models.data.images import image_files, is_image


def test_image_files_by_suffix_any_case_sorted_and_recursive(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "sub/d.jpeg", "sub/e.bmp", "sub/f.gif", "c.png.bak"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == [
        "a.JPG",
        "b.png",
        "sub/d.jpeg",
        "sub/e.bmp",
    ]
    assert image_files(tmp_path / "sub", tmp_path / "missing") == [
        tmp_path / "sub/d.jpeg",
        tmp_path / "sub/e.bmp",
    ]
    assert is_image("x/0606.PNG") and not is_image("x/Label.txt")
