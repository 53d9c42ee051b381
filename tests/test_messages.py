"""Messages: validation where they are built, the wire round trip, and malformed input."""

from __future__ import annotations

import json
import pickle
import time

import numpy as np
import pytest
import zmq

from pipeline.messages import (
    Detections,
    EndOfStream,
    Frame,
    MessageError,
    PersonCrops,
    StageDone,
    Tracks,
    TrackState,
)
from pipeline.urls import mask_url, mask_urls_in
from pipeline.wire import decode, encode


def _tracks(n: int = 2) -> Tracks:
    return Tracks(
        np.arange(1, n + 1, dtype=np.int64),
        np.tile(np.array([[1.5, 2.5, 30.0, 60.0]], np.float32), (n, 1)),
        np.linspace(0.5, 0.9, n).astype(np.float32),
        np.array([TrackState.NEW, TrackState.UPDATED][:n] + [TrackState.LOST] * max(0, n - 2), np.uint8),
    )


def _frame(**kw) -> Frame:
    image = np.random.default_rng(0).integers(0, 255, (36, 64, 3), dtype=np.uint8)
    defaults = dict(stream_id="cam1", seq=7, pts=0.28, capture_time=time.time(), image=image)
    defaults.update(kw)
    return Frame(**defaults)


# -- validation -------------------------------------------------------------------------------------
def test_detections_shape_error_names_field_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"xyxy must have shape \(N, 4\), got \(3, 5\)"):
        Detections(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), np.zeros(3, np.int32))


def test_detections_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same length N.*confidence=2"):
        Detections(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), np.zeros(3, np.int32))


def test_safe_dtype_cast_is_allowed_lossy_is_not() -> None:
    dets = Detections(np.zeros((2, 4), np.float64), np.zeros(2, np.float64), np.zeros(2, np.int64))
    assert dets.xyxy.dtype == np.float32 and dets.class_id.dtype == np.int32
    with pytest.raises(ValueError, match="Frame.image must have dtype uint8"):
        _frame(image=np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="confidence must have dtype float32, got complex128"):
        Tracks(
            np.zeros(1, np.int64), np.zeros((1, 4), np.float32), np.zeros(1, complex), np.zeros(1, np.uint8)
        )


def test_arrays_are_made_contiguous() -> None:
    image = np.zeros((40, 64, 3), np.uint8)[::2]
    assert not image.flags.c_contiguous
    assert _frame(image=image).image.flags.c_contiguous


def test_frame_field_errors() -> None:
    with pytest.raises(ValueError, match="stream_id must be a non-empty string"):
        _frame(stream_id="")
    with pytest.raises(ValueError, match="seq must be an integer >= 0"):
        _frame(seq=-1)
    with pytest.raises(ValueError, match=r"image must have shape \(N, N, 3\)"):
        _frame(image=np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="detections must be Detections or None"):
        _frame(detections=[1, 2])


def test_track_state_range_and_crops_count() -> None:
    with pytest.raises(ValueError, match="state values must be TrackState"):
        Tracks(
            np.zeros(1, np.int64),
            np.zeros((1, 4), np.float32),
            np.zeros(1, np.float32),
            np.array([9], np.uint8),
        )
    with pytest.raises(ValueError, match="one crop per track: 2 tracks, 1 crops"):
        PersonCrops("c", 0, None, 0.0, (36, 64), _tracks(2), np.zeros((1, 8, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="frame_size must be"):
        PersonCrops("c", 0, None, 0.0, (36,), _tracks(0), np.zeros((0, 8, 4, 3), np.uint8))


def test_end_of_stream_reason() -> None:
    with pytest.raises(ValueError, match="reason must be one of"):
        EndOfStream("cam1", "done")


def test_messages_are_frozen() -> None:
    frame = _frame()
    with pytest.raises(AttributeError):
        frame.seq = 3  # type: ignore[misc]


# -- round trip -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "message",
    [
        _frame(),
        _frame(pts=None, detections=Detections.empty()),
        _frame(
            detections=Detections(np.ones((2, 4), np.float32), np.ones(2, np.float32), np.zeros(2, np.int32)),
            tracks=_tracks(3),
        ),
        PersonCrops("cam2", 3, 0.1, 12.5, (36, 64), _tracks(2), np.full((2, 16, 8, 3), 7, np.uint8)),
        PersonCrops("cam2", 4, None, 12.5, (36, 64), Tracks.empty(), np.zeros((0, 16, 8, 3), np.uint8)),
        EndOfStream("cam1", "error", "file truncated at 3.2 s"),
        StageDone("detect"),
    ],
    ids=["frame", "frame-empty-dets", "frame-tracks", "crops", "crops-empty", "eos", "done"],
)
def test_round_trip(message) -> None:
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    for name in message.__slots__:
        a, b = getattr(message, name), getattr(decoded, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b)
        elif isinstance(a, Detections | Tracks):
            for field in a.__slots__:
                assert np.array_equal(getattr(a, field), getattr(b, field))
        else:
            assert a == b


def test_round_trip_over_zmq_is_zero_copy() -> None:
    """Received arrays are views of the zmq frame buffers (np.frombuffer), not copies."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        pull.bind("inproc://zero-copy")
        push.connect("inproc://zero-copy")
        big = _frame(image=np.full((360, 640, 3), 9, np.uint8))
        push.send_multipart(encode(big), copy=False)
        assert pull.poll(2000)
        parts = pull.recv_multipart(copy=False)
        decoded = decode(parts)
        assert decoded.image.shape == (360, 640, 3) and int(decoded.image[5, 5, 1]) == 9
        assert not decoded.image.flags.owndata and not decoded.image.flags.writeable
        assert np.shares_memory(decoded.image, np.frombuffer(parts[1].buffer, np.uint8))
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


# -- malformed --------------------------------------------------------------------------------------
def _header(message) -> dict:
    return json.loads(bytes(encode(message)[0]))


def _with_header(message, **changes) -> list:
    parts = encode(message)
    header = _header(message)
    header.update(changes)
    return [json.dumps(header).encode()] + parts[1:]


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ([], "empty message"),
        ([b"\x80\x04garbage"], "header is not JSON"),
        ([b"[1, 2]"], "header must be a JSON object"),
        ([pickle.dumps({"v": 1, "type": "frame"})], "header is not JSON"),
        ([b'{"v": 99, "type": "frame", "f": {}, "a": []}'], "schema version 99 is not supported"),
        ([b'{"v": 1, "type": "video", "f": {}, "a": []}'], "unknown message type 'video'"),
        ([b'{"v": 1, "type": "end_of_stream", "f": {"stream_id": "a"}, "a": []}'], "missing field 'reason'"),
        (
            [
                b'{"v": 1, "type": "end_of_stream", "f": {"stream_id": "a", "reason": "x", "detail": ""}, '
                b'"a": []}'
            ],
            "reason must be one of",
        ),
        ([b"x" * 70000], "exceeds the 65536-byte limit"),
    ],
)
def test_malformed_headers_raise_message_error(parts, match) -> None:
    with pytest.raises(MessageError, match=match):
        decode(parts)


def test_malformed_buffers_raise_message_error() -> None:
    frame = _frame()
    parts = encode(frame)
    with pytest.raises(MessageError, match=r"header lists 1 arrays but 2 buffers arrived"):
        decode(parts + [b"extra"])
    with pytest.raises(MessageError, match=r"array 'image' uint8\[36, 64, 3\] needs 6912 bytes, got 10"):
        decode(parts[:1] + [b"0123456789"])
    with pytest.raises(MessageError, match="array 'image' must be uint8, got 'float64'"):
        decode(_with_header(frame, a=[["image", "float64", [36, 64, 3]]]))
    with pytest.raises(MessageError, match="unexpected array 'weights'"):
        decode(_with_header(frame, a=[["weights", "uint8", [36, 64, 3]]]))
    with pytest.raises(MessageError, match="shape must be a list of non-negative integers"):
        decode(_with_header(frame, a=[["image", "uint8", [-1, 64, 3]]]))
    with pytest.raises(MessageError, match=r"image must have shape \(N, N, 3\), got \(6912,\)"):
        decode(_with_header(frame, a=[["image", "uint8", [6912]]]))


def test_encode_rejects_foreign_objects() -> None:
    with pytest.raises(MessageError, match="cannot encode dict"):
        encode({"stream_id": "a"})


# -- credential masking -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://admin:p@ss@cam/x", "rtsp://admin:***@cam/x"),
        ("rtsp://viewer@cam/x", "rtsp://viewer@cam/x"),
        ("rtsp://cam:554/a@b", "rtsp://cam:554/a@b"),
        ("/data/video.mp4", "/data/video.mp4"),
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        # credentials in the query string
        ("rtsp://cam/live?token=abc123&channel=1", "rtsp://cam/live?token=***&channel=1"),
        ("rtsp://u:pw@cam/x?user=admin&password=hunter2", "rtsp://u:***@cam/x?user=admin&password=***"),
        ("rtsp://cam/x?pwd=1&passwd=2&pass=3", "rtsp://cam/x?pwd=***&passwd=***&pass=***"),
        (
            "https://cam/a?apiKey=K&access_token=T;sig=S#f",
            "https://cam/a?apiKey=***&access_token=***;sig=***#f",
        ),
        ("rtsp://cam/x?Auth=Basic&secret=", "rtsp://cam/x?Auth=***&secret=***"),
        ("rtsp://cam/x?channel=1&subtype=0", "rtsp://cam/x?channel=1&subtype=0"),
        ("/data/a?token=x.mp4", "/data/a?token=x.mp4"),  # a file name, not a URL
    ],
)
def test_mask_url(url, masked) -> None:
    assert mask_url(url) == masked


def test_mask_urls_in_text() -> None:
    text = "open rtsp://a:b@h/1 failed, retry http://c:d@e/"
    assert mask_urls_in(text) == "open rtsp://a:***@h/1 failed, retry http://c:***@e/"
    text = "error opening 'rtsp://cam/x?token=abc123&ch=1': 401; next http://h/?password=hunter2."
    masked = mask_urls_in(text)
    assert "abc123" not in masked and "hunter2" not in masked
    assert masked == "error opening 'rtsp://cam/x?token=***&ch=1': 401; next http://h/?password=***"


# -- model blocks and TrackEnd ------------------------------------------------------------------------
def _with_blocks():
    from pipeline.messages import Attributes, Grades, Identities, Restored

    tracks = _tracks(3)
    crops = np.random.default_rng(1).integers(0, 255, (3, 16, 8, 3), dtype=np.uint8)
    names = ("personalMale", "carryingBackpack")
    return PersonCrops(
        "cam1",
        3,
        0.1,
        5.0,
        (36, 64),
        tracks,
        crops,
        grades=Grades(
            np.array([0, 2], np.int32),
            np.full((2, 4), 0.25, np.float32),
            np.array([0, 3], np.uint8),
            np.eye(2, 5, dtype=np.float32),
            np.array([1.0, 0.62], np.float32),
        ),
        restored=Restored(np.array([2], np.int32), crops[2:] // 2),
        attributes=Attributes(
            names,
            np.array([0, 2], np.int32),
            np.array([[0.9, 0.1], [0.2, 0.7]], np.float32),
            np.array([2], np.int32),
            np.array([[0, -1]], np.int8),
            np.array([[0.3, 0.55]], np.float32),
        ),
        identities=Identities(
            np.array([0, 1, 2], np.int32),
            np.array([4, 5, 4], np.int64),
            np.array([1.0, 0.6, 0.7], np.float32),
        ),
    )


def test_blocks_round_trip_through_the_wire() -> None:
    message = _with_blocks()
    back = decode(encode(message))
    assert back.attributes.names == message.attributes.names
    for block in ("grades", "restored", "attributes", "identities"):
        sent, got = getattr(message, block), getattr(back, block)
        for name in ("rows",):
            np.testing.assert_array_equal(getattr(sent, name), getattr(got, name))
    np.testing.assert_array_equal(back.grades.embedding, message.grades.embedding)
    np.testing.assert_array_equal(back.grades.visible, message.grades.visible)
    assert back.grades.visible.dtype == np.float32 and back.grades.scores.shape == (2, 4)
    np.testing.assert_array_equal(back.restored.crops, message.restored.crops)
    np.testing.assert_array_equal(back.attributes.decisions, message.attributes.decisions)
    np.testing.assert_array_equal(back.identities.identity, message.identities.identity)
    plain = decode(
        encode(PersonCrops("cam1", 3, 0.1, 5.0, (36, 64), _tracks(1), np.zeros((1, 4, 4, 3), np.uint8)))
    )
    assert plain.grades is None and plain.identities is None


def test_track_end_round_trip_and_validation() -> None:
    from pipeline.messages import Identities, TrackEnd

    end = TrackEnd(
        "cam1",
        9,
        5.0,
        np.array([3, 4], np.int64),
        identities=Identities(np.array([1], np.int32), np.array([7], np.int64), np.ones(1, np.float32)),
    )
    back = decode(encode(end))
    assert back.track_id.tolist() == [3, 4] and back.identities.identity.tolist() == [7]
    with pytest.raises(ValueError, match=r"TrackEnd.identities.rows must index the 2 track rows"):
        TrackEnd(
            "cam1",
            9,
            5.0,
            np.array([3, 4], np.int64),
            identities=Identities(np.array([2], np.int32), np.array([7], np.int64), np.ones(1, np.float32)),
        )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda h: h.replace('"has_grades":true', '"has_grades":false'), "sent but has_grades is false"),
        (lambda h: h.replace('"personalMale"', "5"), "names must be a non-empty list of strings"),
        (lambda h: h.replace('"grades.grade","uint8"', '"grades.grade","int64"'), "must be uint8"),
        (lambda h: h.replace('"grades.visible","float32"', '"grades.visible","int32"'), "must be float32"),
    ],
)
def test_forged_block_headers_are_rejected(change, match) -> None:
    parts = encode(_with_blocks())
    with pytest.raises(MessageError, match=match):
        decode([change(bytes(parts[0]).decode()).encode()] + parts[1:])


def _grades(visible: list[float], n: int = 2):
    from pipeline.messages import Grades

    return Grades(
        np.arange(n, dtype=np.int32),
        np.full((n, 4), 0.25, np.float32),
        np.zeros(n, np.uint8),
        np.ones((n, 3), np.float32) / np.sqrt(3),
        np.array(visible, np.float32),
    )


@pytest.mark.parametrize("visible", [[0.5, 1.2], [-0.1, 0.5], [float("nan"), 0.5], [0.5, float("inf")]])
def test_grades_visible_must_be_a_fraction(visible) -> None:
    with pytest.raises(MessageError, match=r"Grades\.visible must be finite fractions in \[0, 1\]"):
        _grades(visible)


def test_grades_visible_has_one_value_per_row() -> None:
    assert _grades([0.0, 1.0]).visible.tolist() == [0.0, 1.0]  # the bounds are allowed
    assert _grades(np.array([0.5, 0.25], np.float64)).visible.dtype == np.float32  # safe cast
    with pytest.raises(MessageError, match="visible=1"):
        _grades([0.5], n=2)
    with pytest.raises(MessageError, match=r"Grades\.visible must have shape \(N\)"):
        _grades([[0.5], [0.5]])


def test_grades_without_visible_is_refused_on_the_wire() -> None:
    """An older sender's Grades (no ``visible``) fails with a message naming the field."""
    parts = encode(_with_blocks())
    header = json.loads(bytes(parts[0]))
    keep = [i for i, spec in enumerate(header["a"]) if spec[0] != "grades.visible"]
    header["a"] = [header["a"][i] for i in keep]
    with pytest.raises(MessageError, match="visible"):
        decode([json.dumps(header).encode()] + [parts[1 + i] for i in keep])


def test_rows_must_index_tracks_once_in_order() -> None:
    from pipeline.messages import Identities

    message = _with_blocks()
    for rows, match in (([0, 3], "must index the 3 track rows"), ([1, 1], "strictly increasing")):
        with pytest.raises(ValueError, match=match):
            PersonCrops(
                "cam1",
                3,
                0.1,
                5.0,
                (36, 64),
                message.tracks,
                message.crops,
                identities=Identities(
                    np.array(rows, np.int32), np.array([1, 2], np.int64), np.ones(2, np.float32)
                ),
            )


def test_version_1_headers_still_decode() -> None:
    parts = encode(EndOfStream("cam1", "finished"))
    header = bytes(parts[0]).decode().replace('"v":2', '"v":1')
    assert decode([header.encode()]) == EndOfStream("cam1", "finished")
