"""Annotated video: each stream's frames with track boxes, ids, model labels and the pipeline's fps.

One output file per stream (``{stream_id}.mp4`` under ``directory``), opened on the stream's first
frame (that is when its size is known) and closed at its EndOfStream, so a replay of several files
produces several playable videos as soon as each one ends. A video sink process restarted within a
run (process mode) cannot append to the file its killed predecessor left without an index: it writes
the rest of the stream to ``{stream_id}.part2.mp4`` (part3, ... for later restarts).

Frames are written at their own timestamps (pts, or capture time for sources without pts) in a
1/1000 s time base, so frames dropped upstream on a ``drop_oldest`` link leave a gap in time instead
of speeding the video up. Drawing uses OpenCV on a copy of the frame (received frames are read-only
views of the wire buffer).

**Labels.** Frames come from the track stage; the model stages' PersonCrops (wire the last one, e.g.
``inputs: [track, identify]``) update a per-(stream, track) label cache: latest occlusion grade and
visible fraction, identity, and the attributes decided yes (:func:`short_attribute` makes them
readable). Each box gets ``#track ID n`` / ``occl top-1/4, 62% visible`` / up to ``max_attributes``
attributes on a dark strip above it.

**Label sync rule** (``sync_labels``, default on). A Frame arrives before the labelled PersonCrops of
the same (stream, seq), so frames are buffered per stream and frame ``seq`` is written once a
*labelled* PersonCrops (one carrying a model block; the tracker's own PersonCrops carries none and
does not count) with that seq or a later one has arrived. A frame without tracks needs no label and
goes out as soon as the frames before it have. The buffer is bounded: ``sync_frames`` frames per
stream and ``sync_max_mb`` for all streams together; when full, the oldest frame is written with the
labels known so far. A stream that fills its buffer before any labelled PersonCrops arrived (a
detect-and-track graph, or models still loading) stops waiting: its frames are written at once, as
without models, until a labelled PersonCrops shows up, which turns waiting back on. EndOfStream and
``on_stop`` flush everything. ``sync_labels: false`` never buffers (labels then lag by the models'
latency). TrackEnd forgets a track's labels once no buffered frame can still need them; labels of a
track not seen for ``track_idle_s`` of capture time are dropped too.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.data.peta_attributes import PETA_COLOURS
from pipeline.messages import GRADE_NAMES, EndOfStream, Frame, PersonCrops, TrackEnd, TrackState
from pipeline.registry import register_stage
from pipeline.stage import Stage
from stages.sinks.common import RowBlocks, TrackTable, output_path, safe_name, under

__all__ = [
    "VideoSink",
    "VideoSinkConfig",
    "TrackLabel",
    "draw_annotations",
    "label_lines",
    "short_attribute",
    "text_scale",
]

_TIME_BASE = Fraction(1, 1000)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_STRIP = (24, 24, 24)  # BGR of the label background
_TEXT = (255, 255, 255)


class VideoSinkConfig(BaseModel):
    """Output files, the look of the annotations and how frames wait for their labels."""

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
    line_width: int = Field(
        2, ge=1, le=10, description="Box line width in pixels up to 720p; scaled up with taller frames."
    )
    max_attributes: int = Field(
        3, ge=0, le=10, description="Most decided attributes shown per box (most probable first)."
    )
    sync_labels: bool = Field(
        True,
        description="Buffer frames until the model stages' PersonCrops of the same frame arrived, so labels "
        "match their frame (see the module doc for the rule); false = write at once, labels lag.",
    )
    sync_frames: int = Field(
        48, ge=1, le=1000, description="Most frames buffered per stream while waiting for labels."
    )
    sync_max_mb: float = Field(
        150.0, gt=0, description="Most megabytes of frames buffered for all streams together."
    )
    track_idle_s: float = Field(
        300.0, gt=0, description="Forget a track's labels after this much capture time without it."
    )


# -- labels ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrackLabel:
    """What the model stages said about a track: grade (``GRADE_NAMES`` index) and visible fraction
    (0..1) of its latest grading, identity, and the attribute names decided yes, most probable first."""

    grade: int | None = None
    visible: float | None = None
    identity: int | None = None
    attributes: tuple[str, ...] = ()


_ATTRIBUTE_LABELS: dict[str, str | None] = {
    "personalMale": "male",
    "personalFemale": "female",
    "personalLess15": "age<15",
    "personalLess30": "age<30",
    "personalLess45": "age30-45",
    "personalLess60": "age45-60",
    "personalLarger60": "age60+",
    "hairLong": "long hair",
    "hairShort": "short hair",
    "hairBald": "bald",
    "upperBodyTshirt": "t-shirt",
    "upperBodyVNeck": "v-neck",
    "carryingShoppingTro": "trolley",
    "carryingOther": "carrying",
    # "nothing"/"other" say little on a busy frame
    "accessoryNothing": None,
    "carryingNothing": None,
    "upperBodyOther": None,
    "lowerBodyOther": None,
}
_PARTS = {"upperBody": "top", "lowerBody": "bottom", "footwear": "shoes", "hair": "hair"}
_PREFIXES = ("personal", "carrying", "accessory", "upperBody", "lowerBody", "footwear", "hair")
_COLOURS = frozenset(PETA_COLOURS)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def short_attribute(name: str) -> str | None:
    """A short readable label for an attribute name, None for one not worth showing.

    PETA names lose their body-part prefix (``carryingBackpack`` -> ``backpack``, ``personalMale`` ->
    ``male``, ``upperBodyBlack`` -> ``black top``); other names are split at camelCase / underscores.
    """
    if name in _ATTRIBUTE_LABELS:
        return _ATTRIBUTE_LABELS[name]
    for part, noun in _PARTS.items():
        rest = name[len(part) :]
        if name.startswith(part) and rest in _COLOURS:
            return f"{rest.lower()} {noun}"
    rest = name
    for prefix in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix) and name[len(prefix)].isupper():
            rest = name[len(prefix) :]
            break
    words = _CAMEL.sub(" ", rest.replace("_", " ")).split()
    return " ".join(w.lower() for w in words) or None


def label_lines(track_id: int, label: TrackLabel | None, max_attributes: int = 3) -> list[str]:
    """The text lines drawn above a box: ``#id ID n``, ``occl <grade>`` (nothing when holistic; with
    ``, 62% visible`` when the visible fraction is known), up to ``max_attributes`` readable attributes."""
    if label is None:
        return [f"#{track_id}"]
    head = f"#{track_id}" if label.identity is None else f"#{track_id} ID {label.identity}"
    lines = [head]
    if label.grade:
        occluded = f"occl {GRADE_NAMES[label.grade]}"
        if label.visible is not None:
            occluded += f", {round(100 * label.visible)}% visible"
        lines.append(occluded)
    shown: list[str] = []
    for name in label.attributes:
        text = short_attribute(name)
        if text and text not in shown:
            shown.append(text)
        if len(shown) >= max_attributes:
            break
    if shown:
        lines.append(", ".join(shown))
    return lines


# -- drawing --------------------------------------------------------------------------------------
def text_scale(height: int) -> tuple[float, int]:
    """Font scale and stroke for a frame height: readable at 360p, not huge at 1080p."""
    scale = max(0.4, height / 720 * 0.6)
    return scale, max(1, int(round(scale * 1.7)))


def _color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-angle hue)."""
    hue = int((track_id * 137.508) % 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def _draw_label(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    lines: list[str],
    color: tuple[int, int, int],
    scale: float,
    stroke: int,
    bar: int,
) -> None:
    """``lines`` on a dark strip above the box (inside it at the frame's top edge), a colour bar left."""
    height, width = image.shape[:2]
    x1, y1 = box[0], box[1]
    sizes = [cv2.getTextSize(text, _FONT, scale, stroke) for text in lines]
    pad = max(2, int(round(4 * scale)))
    row = max(th + base for (_, th), base in sizes) + pad
    strip_h = row * len(lines) + pad
    strip_w = bar + pad + max(tw for (tw, _), _ in sizes) + pad
    top = y1 - strip_h if y1 - strip_h >= 0 else max(y1, 0)
    left = min(max(x1, 0), max(width - strip_w, 0))
    cv2.rectangle(image, (left, top), (left + strip_w - 1, min(top + strip_h, height) - 1), _STRIP, -1)
    cv2.rectangle(image, (left, top), (left + bar - 1, min(top + strip_h, height) - 1), color, -1)
    for k, (text, ((_, th), _)) in enumerate(zip(lines, sizes, strict=True)):
        baseline_y = top + pad + row * k + th
        cv2.putText(image, text, (left + bar + pad, baseline_y), _FONT, scale, _TEXT, stroke, cv2.LINE_AA)


def draw_annotations(
    frame: Frame,
    fps: float | None,
    line: int = 2,
    draw_lost: bool = False,
    labels: Mapping[int, TrackLabel] | None = None,
    max_attributes: int = 3,
) -> np.ndarray:
    """A BGR copy of ``frame.image`` with track boxes + labels (or detections if untracked) and fps.

    ``labels`` maps track id -> :class:`TrackLabel`; ``line`` is the box width up to 720p, scaled up
    with taller frames, like the text (:func:`text_scale`).
    """
    image = frame.image.copy()
    height = image.shape[0]
    line = max(line, int(round(line * height / 720)))
    scale, stroke = text_scale(height)
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
            lines = label_lines(tid, None if labels is None else labels.get(tid), max_attributes)
            _draw_label(image, (x1, y1, x2, y2), lines, color, scale, stroke, max(2, line))
    elif frame.detections is not None:
        for box in frame.detections.xyxy:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 200, 255), line)
    if fps is not None:
        fps_scale = max(0.6, scale)
        origin = (8, 8 + cv2.getTextSize("0", _FONT, fps_scale, stroke)[0][1] + 4)
        text = f"{fps:5.1f} fps"
        cv2.putText(image, text, origin, _FONT, fps_scale, (0, 0, 0), stroke + 2, cv2.LINE_AA)
        cv2.putText(image, text, origin, _FONT, fps_scale, (255, 255, 255), stroke, cv2.LINE_AA)
    return image


# -- the sink -------------------------------------------------------------------------------------
@dataclass
class _Output:
    path: Path
    container: Any
    stream: Any
    first_time: float
    last_pts: int = -1
    frames: int = 0


@dataclass
class _Pending:
    frame: Frame
    fps: float | None


@dataclass
class _Stream:
    waiting: bool  # buffer frames until their labels arrived
    buffer: deque[_Pending] = field(default_factory=deque)
    bytes: int = 0
    labelled_seq: int = -1  # highest seq of a labelled PersonCrops
    frame_seq: int = -1  # highest seq of a Frame
    ended: list[tuple[int, list[int]]] = field(default_factory=list)  # TrackEnds (seq, ids) to apply
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=30))


@register_stage("video_sink")
class VideoSink(Stage):
    """Encodes one annotated video per stream, labelled by the model stages when they are wired in."""

    Config: ClassVar[type[BaseModel]] = VideoSinkConfig
    accepts: ClassVar[tuple[type, ...]] = (Frame, PersonCrops, TrackEnd)
    emits: ClassVar[tuple[type, ...] | None] = ()

    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        return [under(output_dir, config.directory) / config.filename.replace("{stream_id}", "*")]

    def on_start(self) -> None:
        self.directory = output_path(self.context, self.config.directory, directory=True)
        self._outputs: dict[str, _Output] = {}
        self._streams: dict[str, _Stream] = {}
        self._labels: TrackTable[TrackLabel] = TrackTable(self.config.track_idle_s)
        self._buffered_bytes = 0
        self._max_bytes = int(self.config.sync_max_mb * 1e6)
        self.written: dict[str, Path] = {}

    def _stream(self, stream_id: str) -> _Stream:
        state = self._streams.get(stream_id)
        if state is None:
            state = self._streams[stream_id] = _Stream(waiting=self.config.sync_labels)
        return state

    # -- messages -----------------------------------------------------------------------------
    def process(self, message: Any) -> Iterable[Any]:
        if isinstance(message, EndOfStream):
            self._end_stream(message.stream_id)
        elif isinstance(message, TrackEnd):
            state = self._stream(message.stream_id)
            state.ended.append((message.seq, message.track_id.tolist()))
            self._release_ended(message.stream_id, state)
        elif isinstance(message, PersonCrops):
            self._labelled(message)
        else:
            self._frame(message)
        return ()

    def _frame(self, frame: Frame) -> None:
        state = self._stream(frame.stream_id)
        now = time.monotonic()
        state.arrivals.append(now)
        fps = None
        if self.config.show_fps and len(state.arrivals) >= 2 and state.arrivals[-1] > state.arrivals[0]:
            fps = (len(state.arrivals) - 1) / (state.arrivals[-1] - state.arrivals[0])
        state.frame_seq = max(state.frame_seq, frame.seq)
        self._labels.expire(frame.stream_id, frame.capture_time)
        if not state.waiting:
            self._write(frame, fps)
            return
        state.buffer.append(_Pending(frame, fps))
        size = frame.image.nbytes
        state.bytes += size
        self._buffered_bytes += size
        self._release(frame.stream_id, state)

    def _labelled(self, message: PersonCrops) -> None:
        """Update the label cache from a model stage's blocks; release the frames now labelled."""
        blocks = RowBlocks.of(message)
        if not blocks.labelled:
            return  # the tracker's own PersonCrops: nothing to draw, and it must not release frames
        stream_id, now = message.stream_id, message.capture_time
        state = self._stream(stream_id)
        self._labels.expire(stream_id, now)
        tracks = message.tracks
        for i in range(len(tracks)):
            if int(tracks.state[i]) == TrackState.ENDED:
                continue  # never drawn; do not bring back the labels of a track being forgotten
            track_id = int(tracks.track_id[i])
            label = self._labels.get(stream_id, track_id)
            grade, identity, positive = blocks.grade.get(i), blocks.identity.get(i), blocks.positive(i)
            if label is None and grade is None and identity is None and positive is None:
                continue
            label = label or TrackLabel()
            if grade is not None:
                label = replace(label, grade=int(grade), visible=blocks.visible.get(i))
            if identity is not None:
                label = replace(label, identity=identity[0])
            if positive is not None:
                label = replace(label, attributes=positive)
            self._labels.put(stream_id, track_id, label, now)
        state.labelled_seq = max(state.labelled_seq, message.seq)
        if self.config.sync_labels and not state.waiting:
            state.waiting = True
            self.context.logger.info("video_sink stream %s: labels arrived, frames wait for them", stream_id)
        self._release(stream_id, state)

    # -- the buffer ---------------------------------------------------------------------------
    def _release(self, stream_id: str, state: _Stream) -> None:
        """Write the frames whose labels are in (in order), then enforce the buffer bounds."""
        while state.buffer and self._ready(state.buffer[0].frame, state):
            self._pop(stream_id, state)
        while len(state.buffer) > self.config.sync_frames:
            if state.labelled_seq < 0:
                state.waiting = False
                self.context.logger.info(
                    "video_sink stream %s: no labelled PersonCrops within %d frames; writing frames "
                    "without waiting",
                    stream_id,
                    self.config.sync_frames,
                )
                while state.buffer:
                    self._pop(stream_id, state)
            else:
                self._pop(stream_id, state)
                self.context.count("label_wait_timeouts")
        while self._buffered_bytes > self._max_bytes:
            fullest_id, fullest = max(self._streams.items(), key=lambda kv: kv[1].bytes)
            if not fullest.buffer:
                break
            self._pop(fullest_id, fullest)
            self.context.count("label_wait_timeouts")
        self._release_ended(stream_id, state)

    @staticmethod
    def _ready(frame: Frame, state: _Stream) -> bool:
        if frame.seq <= state.labelled_seq:
            return True
        tracks = frame.tracks
        return tracks is None or not bool(np.any(tracks.state != TrackState.ENDED))

    def _pop(self, stream_id: str, state: _Stream) -> None:
        pending = state.buffer.popleft()
        size = pending.frame.image.nbytes
        state.bytes -= size
        self._buffered_bytes -= size
        self._write(pending.frame, pending.fps)

    def _release_ended(self, stream_id: str, state: _Stream) -> None:
        """Forget the labels of ended tracks once no buffered frame needs them and their last labels are
        in (or frames have moved on by ``sync_frames``: labels that late would not be drawn anyway)."""
        if not state.ended:
            return
        head = state.buffer[0].frame.seq if state.buffer else None
        keep = []
        for seq, track_ids in state.ended:
            labels_in = (
                not state.waiting
                or state.labelled_seq >= seq
                or state.frame_seq - seq > self.config.sync_frames
            )
            done = (head is None or head >= seq) and labels_in
            if done:
                for track_id in track_ids:
                    self._labels.pop(stream_id, track_id)
            else:
                keep.append((seq, track_ids))
        state.ended = keep

    def _flush(self, stream_id: str) -> None:
        state = self._streams.get(stream_id)
        while state is not None and state.buffer:
            self._pop(stream_id, state)

    def _end_stream(self, stream_id: str) -> None:
        self._flush(stream_id)
        self._streams.pop(stream_id, None)
        self._labels.pop_stream(stream_id)
        self._close(stream_id)

    # -- encoding -----------------------------------------------------------------------------
    def _write(self, frame: Frame, fps: float | None) -> None:
        out = self._outputs.get(frame.stream_id) or self._open(frame)
        labels: dict[int, TrackLabel] = {}
        if frame.tracks is not None:
            for track_id in frame.tracks.track_id.tolist():
                label = self._labels.get(frame.stream_id, track_id)
                if label is not None:
                    labels[track_id] = label
        image = draw_annotations(
            frame, fps, self.config.line_width, self.config.draw_lost, labels, self.config.max_attributes
        )
        if image.shape[:2] != (out.stream.height, out.stream.width):  # odd sizes: yuv420p needs even
            image = np.ascontiguousarray(image[: out.stream.height, : out.stream.width])
        when = frame.pts if frame.pts is not None else frame.capture_time
        pts = max(out.last_pts + 1, int(round((when - out.first_time) / _TIME_BASE)))
        video_frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        video_frame.pts = pts
        video_frame.time_base = _TIME_BASE
        for packet in out.stream.encode(video_frame):
            out.container.mux(packet)
        out.last_pts = pts
        out.frames += 1

    def _open(self, frame: Frame) -> _Output:
        name = self.config.filename.replace("{stream_id}", safe_name(frame.stream_id))
        path = self.directory / name
        restarts = self.context.run.restarts
        if restarts:  # the killed process's file has no index: keep it, go on in a new part
            path = path.with_name(f"{path.stem}.part{restarts + 1}{path.suffix}")
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
        for stream_id in list(self._streams):
            self._flush(stream_id)
        self._streams.clear()
        for stream_id in list(self._outputs):
            self._close(stream_id)
        return ()
