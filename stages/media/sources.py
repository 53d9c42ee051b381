"""Turn a user's ``source`` (a file, a directory, a list of files, a camera URL) into decodable inputs.

Also holds the credential scrubbing every log line, metric label and event text goes through: an
RTSP URL such as ``rtsp://user:secret@cam/stream`` must never leak its password, and PyAV's own
exception messages quote the URL they failed on, so those are scrubbed too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.urls import mask_url, mask_urls_in

__all__ = ["VIDEO_EXTENSIONS", "LIVE_SCHEMES", "ResolvedSource", "resolve_source", "mask_url", "scrub"]

#: Extensions picked up when a directory is given (case-insensitive).
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".264",
        ".h264",
        ".265",
        ".h265",
        ".hevc",
        ".mjpeg",
        ".mjpg",
        ".mpg",
        ".mpeg",
        ".wmv",
    }
)
#: URL schemes treated as live sources (reconnect on failure, no pacing, wall-clock timestamps).
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp"})

# Raw elementary streams carry no container, so FFmpeg must be told the format explicitly.
_RAW_FORMATS = {".264": "h264", ".h264": "h264", ".265": "hevc", ".h265": "hevc", ".hevc": "hevc"}


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """Remove credentials from free text (PyAV exception messages quote the URL they failed on).

    Masks userinfo in every URL (``pipeline.urls.mask_urls_in``) and, for each secret URL given,
    its password wherever it appears on its own.
    """
    for secret in secrets:
        password = urlsplit(secret).password if "://" in secret else None
        if password and len(password) >= 3:
            text = text.replace(secret, mask_url(secret)).replace(password, "***")
    return mask_urls_in(text)


def is_live(source: str) -> bool:
    """True when ``source`` is a network URL (camera) rather than a local file."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    return scheme in LIVE_SCHEMES


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """What one stream reads: either one live URL or an ordered list of local files."""

    live: bool
    inputs: tuple[str, ...]

    def container_format(self, item: str) -> str | None:
        """FFmpeg demuxer to force for ``item`` (raw .264/.265 have no container to probe)."""
        return None if self.live else _RAW_FORMATS.get(Path(item).suffix.lower())

    def describe(self) -> str:
        """Credential-free description for logs."""
        if self.live:
            return mask_url(self.inputs[0])
        return self.inputs[0] if len(self.inputs) == 1 else f"{len(self.inputs)} files from {self.inputs[0]}"


def _natural_key(path: Path) -> list[object]:
    # cam_2.mp4 before cam_10.mp4: recordings are usually numbered without zero padding.
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def resolve_source(source: str | Sequence[str]) -> ResolvedSource:
    """Expand ``source`` into inputs; raise ValueError naming the path when nothing can be read.

    A directory yields its video files (by extension, natural sort order, not recursive); a list is
    taken in the given order and may mix files and directories; a URL with a live scheme is a camera.
    """
    items = [source] if isinstance(source, str) else list(source)
    if not items:
        raise ValueError(
            "source is empty: give a video file, a directory of videos, a list of files or a URL"
        )
    if any(is_live(str(item)) for item in items):
        if len(items) != 1:
            raise ValueError(f"a live URL must be the only source of its stream, got {len(items)} entries")
        return ResolvedSource(live=True, inputs=(str(items[0]),))
    files: list[str] = []
    for item in items:
        path = Path(str(item).removeprefix("file://")).expanduser()
        if path.is_dir():
            videos = (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            found = sorted(videos, key=_natural_key)
            if not found:
                raise ValueError(
                    f"directory {str(path)!r} holds no video files "
                    f"(looked for {', '.join(sorted(VIDEO_EXTENSIONS))})"
                )
            files.extend(str(p) for p in found)
        elif path.is_file():
            files.append(str(path))
        else:
            raise ValueError(f"source {str(item)!r} is neither a video file, a directory nor a stream URL")
    return ResolvedSource(live=False, inputs=tuple(files))
