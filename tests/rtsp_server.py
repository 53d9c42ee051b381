"""A real RTSP server for the ingest tests (GStreamer's gst-rtsp-server), run by Debian's python3.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--path /test] [--file VIDEO]
        [--fps 15] [--size 320x240] [--user U --password P] [--stall | --stall-after SECONDS]

It prints ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout once it listens, then serves until it is
terminated. ``--stall`` completes the RTSP handshake (DESCRIBE/SETUP/PLAY) but never sends an RTP
packet: a camera that accepts and goes silent. ``--stall-after S`` sends S seconds of video to each
client, then goes silent. Both drop buffers after the payloader with a pad probe, so the caps (and
the SDP) are still produced. Kept free of project imports: it runs outside the project's venv.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def build_launch(args: argparse.Namespace) -> str:
    width, height = (int(v) for v in args.size.lower().split("x"))
    encode = (
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} bitrate=800 "
        f"! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if args.file:
        return (
            f"( filesrc location={args.file} ! decodebin ! videoconvert ! videoscale "
            f"! video/x-raw,width={width},height={height},format=I420 ! {encode} )"
        )
    return (
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={width},height={height},framerate={args.fps}/1,format=I420 ! {encode} )"
    )


class StallingFactory(GstRtspServer.RTSPMediaFactory):
    """Media factory whose payloader output can be cut off (never, from the start, or after S s)."""

    def __init__(self, stall: bool, stall_after: float | None) -> None:
        super().__init__()
        self.stall = stall
        self.stall_after = stall_after
        self.connect("media-configure", self._on_configure)

    def _on_configure(self, _factory, media) -> None:
        if not self.stall and self.stall_after is None:
            return
        pay = media.get_element().get_by_name("pay0")
        started: list[float] = []

        def probe(_pad, _info):
            if self.stall:
                return Gst.PadProbeReturn.DROP
            if not started:
                started.append(time.monotonic())
            if time.monotonic() - started[0] >= self.stall_after:
                return Gst.PadProbeReturn.DROP
            return Gst.PadProbeReturn.OK

        mask = Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST
        pay.get_static_pad("src").add_probe(mask, probe)


def add_auth(server, factory, user: str, password: str) -> None:
    """Require HTTP basic credentials (so the client really sends the secret it must not log)."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, user)
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role(user, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    permissions.add_permission_for_role(user, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    factory.set_permissions(permissions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/test")
    parser.add_argument("--file", default=None, help="serve this video (re-encoded), not a test pattern")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--user", default=None)
    parser.add_argument("--password", default=None)
    parser.add_argument("--stall", action="store_true", help="handshake, then never send a frame")
    parser.add_argument("--stall-after", type=float, default=None, help="go silent after this many seconds")
    args = parser.parse_args(argv)

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = StallingFactory(args.stall, args.stall_after)
    factory.set_launch(build_launch(args))
    factory.set_shared(False)  # every client gets its own pipeline (and its own stall clock)
    if args.user:
        add_auth(server, factory, args.user, args.password or "")
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
