"""Write small synthetic clips with PyAV: smoke tests and benchmarks need media nobody has to ship.

The picture is a dark background with a bright box moving left to right and the frame index
encoded in the top-left block's brightness, so a reader can check order and content.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

__all__ = ["synthetic_frame", "write_clip"]

# Container/stream-format pairs FFmpeg needs spelled out (raw elementary streams have no container).
_FORMATS = {".264": "h264", ".h264": "h264", ".265": "hevc", ".h265": "hevc", ".hevc": "hevc"}
_CODECS = {".avi": "mpeg4", ".265": "libx265", ".h265": "libx265", ".hevc": "libx265"}


def synthetic_frame(index: int, width: int, height: int) -> np.ndarray:
    """BGR uint8 frame ``index`` of the synthetic clip."""
    image = np.full((height, width, 3), 30, np.uint8)
    box = max(8, height // 4)
    x = (index * 4) % max(1, width - box)
    image[height // 2 - box // 2 : height // 2 + box // 2, x : x + box] = (40, 200, 240)
    image[:16, :16] = min(255, 10 + 8 * (index % 30))
    return image


def write_clip(
    path: str | Path,
    frames: int = 30,
    width: int = 160,
    height: int = 96,
    fps: int = 25,
    codec: str | None = None,
) -> Path:
    """Encode ``frames`` synthetic frames to ``path``; the codec follows the extension by default
    (H.264 for mp4/mkv/.264, HEVC for .265, MPEG-4 part 2 for avi)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if codec is None:
        codec = _CODECS.get(suffix, "libx264")
    options = {"x265-params": "log-level=none"} if codec == "libx265" else {}
    with av.open(str(path), "w", format=_FORMATS.get(suffix)) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(index, width, height), format="bgr24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
