"""Annotated video: each stream's frames with track boxes, ids and the pipeline's fps, encoded with PyAV.

One output file per stream (``{stream_id}.mp4`` under ``directory``), opened on the stream's first
frame (that is when its size is known) and closed at its EndOfStream, so a replay of several files
produces several playable videos as soon as each one ends. Frames are written at their own
timestamps (pts, or capture time for sources without pts) in a 1/1000 s time base, so frames
dropped upstream on a ``drop_oldest`` link leave a gap in time instead of speeding the video up.
Drawing uses OpenCV on a copy of the frame (received frames are read-only views of the wire buffer).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import EndOfStream, Frame, TrackState
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import output_path, safe_name

__all__ = ["VideoSink", "VideoSinkConfig", "draw_annotations"]

_TIME_BASE = Fraction(1, 1000)


class VideoSinkConfig(BaseModel):
    """Output files and the look of the annotations."""

    model_config = ConfigDict(extra="forbid")

    directory: str = Field(
        ".", description="Folder of the output videos; relative paths are under output_dir."
    )
    filename: str = Field("{stream_id}.mp4", description="File name pattern; {stream_id} is replaced.")
    codec: str = Field("libx264", description="FFmpeg encoder (libx264, mpeg4, h264_nvenc, ...).")
    fallback_codec: str = Field("mpeg4", description="Encoder used when `codec` is not available.")
    crf: int = Field(23, ge=0, le=51, description="x264 quality (lower = better, bigger).")
    preset: str = Field(
        "ultrafast",
        description="x264 speed preset (ultrafast ... veryslow). ultrafast by default: the annotated video"
        " is a review copy, and on a small edge box the CPU belongs to detection and tracking.",
    )
    fps: float = Field(25.0, gt=0, description="Nominal frame rate written in the container header.")
    draw_lost: bool = Field(False, description="Also draw LOST (predicted, unmatched) tracks, dashed grey.")
    show_fps: bool = Field(True, description="Overlay the rate at which this sink receives frames.")
    line_width: int = Field(2, ge=1, le=10, description="Box line width in pixels.")


def _color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-angle hue)."""
    hue = int((track_id * 137.508) % 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_annotations(frame: Frame, fps: float | None, line: int = 2, draw_lost: bool = False) -> np.ndarray:
    """A BGR copy of ``frame.image`` with track boxes + ids (or detections if untracked) and fps."""
    image = frame.image.copy()
    if frame.tracks is not None:
        tracks = frame.tracks
        for i in range(len(tracks)):
            state = int(tracks.state[i])
            if state == TrackState.ENDED or (state == TrackState.LOST and not draw_lost):
                continue
            x1, y1, x2, y2 = (int(round(float(v))) for v in tracks.xyxy[i])
            tid = int(tracks.track_id[i])
            color = (128, 128, 128) if state == TrackState.LOST else _color(tid)
            cv2.rectangle(image, (x1, y1), (x2, y2), color, line)
            label = f"#{tid}"
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            top = y1 - th - 4 if y1 >= th + 4 else y1  # above the box, or inside it at the frame's top edge
            cv2.rectangle(image, (x1, top), (x1 + tw + 4, top + th + 4), color, -1)
            cv2.putText(
                image,
                label,
                (x1 + 2, top + th + 1),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 0),
                1,
                cv2.LINE_AA,
            )
    elif frame.detections is not None:
        for box in frame.detections.xyxy:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 255), line)
    if fps is not None:
        cv2.putText(
            image, f"{fps:5.1f} fps", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA
        )
        cv2.putText(
            image, f"{fps:5.1f} fps", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA
        )
    return image


@dataclass
class _Output:
    path: Path
    container: Any
    stream: Any
    first_time: float
    last_pts: int = -1
    frames: int = 0
    arrivals: list[float] = field(default_factory=list)


@register_stage("video_sink")
class VideoSink(Stage):
    """Encodes one annotated video per stream."""

    Config: ClassVar[type[BaseModel]] = VideoSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (Frame,)
    emits: ClassVar[tuple[type, ...] | None] = ()

    def on_start(self) -> None:
        self.directory = output_path(self.context, self.config.directory, directory=True)
        self._outputs: dict[str, _Output] = {}
        self.written: dict[str, Path] = {}

    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            self._close(message.stream_id)
            return ()
        out = self._outputs.get(message.stream_id) or self._open(message)
        now = time.monotonic()
        out.arrivals.append(now)
        if len(out.arrivals) > 30:
            del out.arrivals[0]
        fps = None
        if self.config.show_fps and len(out.arrivals) >= 2 and out.arrivals[-1] > out.arrivals[0]:
            fps = (len(out.arrivals) - 1) / (out.arrivals[-1] - out.arrivals[0])
        image = draw_annotations(message, fps, self.config.line_width, self.config.draw_lost)
        if image.shape[:2] != (out.stream.height, out.stream.width):  # odd sizes: yuv420p needs even
            image = np.ascontiguousarray(image[: out.stream.height, : out.stream.width])
        when = message.pts if message.pts is not None else message.capture_time
        pts = max(out.last_pts + 1, int(round((when - out.first_time) / _TIME_BASE)))
        video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        video_frame.pts = pts
        video_frame.time_base = _TIME_BASE
        for packet in out.stream.encode(video_frame):
            out.container.mux(packet)
        out.last_pts = pts
        out.frames += 1
        return ()

    def _open(self, frame: Frame) -> _Output:
        name = self.config.filename.replace("{stream_id}", safe_name(frame.stream_id))
        path = self.directory / name
        height, width = frame.image.shape[:2]
        container = av.open(str(path), mode="w")
        codec = self.config.codec
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # noqa: BLE001 - any lookup failure means "not available here"
            self.context.logger.warning(
                "encoder %s not available; using %s", codec, self.config.fallback_codec
            )
            codec = self.config.fallback_codec
        stream = container.add_stream(codec, rate=Fraction(self.config.fps).limit_denominator(1001))
        stream.width = width - width % 2
        stream.height = height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = _TIME_BASE
        if codec in ("libx264", "h264"):
            stream.options = {"crf": str(self.config.crf), "preset": self.config.preset}
        first = frame.pts if frame.pts is not None else frame.capture_time
        out = _Output(path, container, stream, first)
        self._outputs[frame.stream_id] = out
        self.context.logger.info("video_sink writing stream %s to %s", frame.stream_id, path)
        return out

    def _close(self, stream_id: str) -> None:
        out = self._outputs.pop(stream_id, None)
        if out is None:
            return
        for packet in out.stream.encode(None):
            out.container.mux(packet)
        out.container.close()
        self.written[stream_id] = out.path
        self.context.count("videos_written")
        self.context.logger.info("video_sink closed %s (%d frames)", out.path, out.frames)

    def on_stop(self) -> Iterable[Any]:
        for stream_id in list(self._outputs):
            self._close(stream_id)
        return ()
