"""Link security over real sockets: CURVE on tcp, PLAIN run secrets on ipc, key files, the ipc folder.

Every "server" is a ROUTER with its own context and guard (the receiving stage's process), every
"client" a DEALER with another context and guard (the sending stage's process). Receives sit behind
polls with deadlines. Sockets are closed with linger 0.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from pydantic import ValidationError

from pipeline.configfile import ConfigError
from pipeline.security import (
    TCP_NEEDS_SECURITY,
    Credentials,
    LinkGuard,
    SecurityConfig,
    add_keys_parser,
    check_security,
    ensure_private_dir,
    job_secrets,
    link_password,
    make_keys,
    new_run_secrets,
)
from pipeline.transport import Link

MARKER = b"payload-that-an-eavesdropper-must-not-read"


def _link(up: str, down: str, endpoint: str) -> Link:
    return Link(upstream=up, downstream=down, endpoint=endpoint, policy="block", hwm=16, accepts=())


class _Refusals:
    """The on_refused callback: records (link, reason) and lets a test wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._cond = threading.Condition()

    def __call__(self, link: str, reason: str) -> None:
        with self._cond:
            self.seen.append((link, reason))
            self._cond.notify_all()

    def wait_for(self, link: str, reasons: str | tuple[str, ...], timeout: float = 3.0) -> bool:
        wanted = {(link, r) for r in ((reasons,) if isinstance(reasons, str) else reasons)}
        deadline = time.monotonic() + timeout
        with self._cond:
            while not wanted & set(self.seen):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


class _Net:
    """Contexts, guards and sockets of one test, torn down in the right order."""

    def __init__(self) -> None:
        self.contexts: list[zmq.Context] = []
        self.guards: list[LinkGuard] = []
        self.sockets: list[zmq.Socket] = []
        self.refusals = _Refusals()

    def guard(self, links: list[Link], credentials: Credentials, local: str | None) -> LinkGuard:
        context = zmq.Context()
        self.contexts.append(context)
        guard = LinkGuard(context, links, credentials, local=local, on_refused=self.refusals)
        self.guards.append(guard)
        guard.context = context  # type: ignore[attr-defined]  # test convenience
        return guard

    def server(self, guard: LinkGuard, link: Link) -> zmq.Socket:
        sock = guard.context.socket(zmq.ROUTER)  # type: ignore[attr-defined]
        sock.linger = 0
        self.sockets.append(sock)
        guard.server(sock, link)
        sock.bind(link.endpoint)
        return sock

    def client(self, guard: LinkGuard | None, link: Link, endpoint: str) -> zmq.Socket:
        if guard is None:  # a raw peer with no security at all
            context = zmq.Context()
            self.contexts.append(context)
            sock = context.socket(zmq.DEALER)
        else:
            sock = guard.context.socket(zmq.DEALER)  # type: ignore[attr-defined]
            guard.client(sock, link)
        sock.linger = 0
        self.sockets.append(sock)
        sock.connect(endpoint)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        for guard in self.guards:
            guard.close()
        for context in self.contexts:
            context.term()


@pytest.fixture
def net() -> Iterator[_Net]:
    network = _Net()
    yield network
    network.close()


def _recv(sock: zmq.Socket, timeout_s: float) -> list[zmq.Frame] | None:
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return sock.recv_multipart(copy=False)


def _keys(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "keys"
    make_keys(folder, names)
    return folder


# -- CURVE on tcp -----------------------------------------------------------------------------------
def test_curve_accepts_the_senders_key_and_tags_messages(tmp_path: Path, net: _Net) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "a", "b"))
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server_guard = net.guard([link], creds, local="b")
    assert server_guard.mechanism(link) == "curve"
    server = net.server(server_guard, link)
    client = net.client(net.guard([link], creds, local="a"), link, server.last_endpoint.decode())
    client.send(b"hello")
    frames = _recv(server, 3.0)
    assert frames is not None, "the sender's message never arrived"
    assert frames[-1].bytes == b"hello"
    assert frames[-1].get("User-Id") == "a"
    assert net.refusals.seen == []


def test_a_shared_host_pair_works_and_names_the_host(tmp_path: Path, net: _Net) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "host"))
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server = net.server(net.guard([link], creds, local="b"), link)
    client = net.client(net.guard([link], creds, local="a"), link, server.last_endpoint.decode())
    client.send(b"hello")
    frames = _recv(server, 3.0)
    assert frames is not None and frames[-1].get("User-Id") == "host"


def test_a_plain_tcp_peer_cannot_talk_to_a_curve_link_and_is_counted(tmp_path: Path, net: _Net) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "a", "b"))
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server = net.server(net.guard([link], creds, local="b"), link)
    raw = net.client(None, link, server.last_endpoint.decode())
    raw.send(MARKER)
    # whichever end notices the mismatch first decides how the receiver sees it
    assert net.refusals.wait_for("a->b", ("wrong_mechanism", "hung_up")), net.refusals.seen
    assert _recv(server, 0.3) is None


@pytest.mark.parametrize(
    ("impostor", "reason"),
    [
        ("valid key of another stage", "denied"),
        ("pins the wrong server key", "bad_handshake"),
    ],
)
def test_curve_refuses_and_counts_impostors(tmp_path: Path, net: _Net, impostor: str, reason: str) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "a", "b", "c"))
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server = net.server(net.guard([link], creds, local="b"), link)
    if impostor == "valid key of another stage":
        fake = _link("c", "b", link.endpoint)  # stage c, with its own valid pair, dials a's link
    else:
        fake = _link("a", "c", link.endpoint)  # a's own key, but it expects the receiver to be c
    client = net.client(net.guard([fake], creds, local=fake.upstream), fake, server.last_endpoint.decode())
    client.send(MARKER)
    assert net.refusals.wait_for("a->b", reason), net.refusals.seen
    assert _recv(server, 0.3) is None


class _Relay:
    """A TCP relay that records every byte it forwards: what an eavesdropper on the wire sees."""

    def __init__(self, target: str) -> None:
        host, _, port = target.removeprefix("tcp://").rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.seen = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        near, _ = self._listener.accept()
                        far = socket.create_connection(self._target, timeout=2)
                        selector.register(near, selectors.EVENT_READ, far)
                        selector.register(far, selectors.EVENT_READ, near)
                        continue
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if data:
                        self.seen += data
                        key.data.sendall(data)
                    else:
                        for end in (key.fileobj, key.data):
                            selector.unregister(end)
                            end.close()
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "insecure"])
def test_curve_encrypts_the_wire(tmp_path: Path, net: _Net, secure: bool) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "a", "b")) if secure else Credentials(insecure=True)
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server = net.server(net.guard([link], creds, local="b"), link)
    relay = _Relay(server.last_endpoint.decode())
    try:
        client = net.client(net.guard([link], creds, local="a"), link, relay.endpoint)
        client.send(MARKER)
        frames = _recv(server, 3.0)
        assert frames is not None and frames[-1].bytes == MARKER
    finally:
        relay.close()
    assert len(relay.seen) > len(MARKER)
    assert (MARKER in relay.seen) is not secure  # the insecure run shows the check can fail


def test_a_socket_that_outlives_its_guard_fails_closed(tmp_path: Path, net: _Net) -> None:
    creds = Credentials(keys_dir=_keys(tmp_path, "a", "b"))
    link = _link("a", "b", "tcp://127.0.0.1:*")
    server_guard = net.guard([link], creds, local="b")
    server = net.server(server_guard, link)
    server_guard.close()  # the wrong order: the ZAP handler is gone, the socket still listens
    client = net.client(net.guard([link], creds, local="a"), link, server.last_endpoint.decode())
    client.send(MARKER)
    assert _recv(server, 0.5) is None


# -- PLAIN run secrets on ipc -----------------------------------------------------------------------
def _ipc_link(tmp_path: Path) -> Link:
    folder = ensure_private_dir(tmp_path / "ipc")
    return _link("a", "b", f"ipc://{folder}/a--b.sock")


def test_run_secret_admits_only_the_declared_sender(tmp_path: Path, net: _Net) -> None:
    link = _ipc_link(tmp_path)
    run = new_run_secrets(["a", "b", "c"])
    # each process gets only what its job carries: b never sees a's secret
    server_secrets = job_secrets("b", [link], run)
    assert set(server_secrets) == {"b", "a->b"} and run["a"] not in server_secrets.values()
    server_guard = net.guard([link], Credentials(run_secrets=server_secrets), local="b")
    assert server_guard.mechanism(link) == "plain"
    server = net.server(server_guard, link)

    sender = net.client(net.guard([link], Credentials(run_secrets=job_secrets("a", [link], run)), "a"),
                        link, link.endpoint)  # fmt: skip
    sender.send(b"EndOfStream")
    frames = _recv(server, 3.0)
    assert frames is not None and frames[-1].bytes == b"EndOfStream"
    assert frames[-1].get("User-Id") == "a"
    assert net.refusals.seen == []


@pytest.mark.parametrize("impostor", ["wrong secret", "other stage", "no credentials"])
def test_run_secret_refuses_and_counts_others(tmp_path: Path, net: _Net, impostor: str) -> None:
    link = _ipc_link(tmp_path)
    run = new_run_secrets(["a", "b", "c"])
    server = net.server(net.guard([link], Credentials(run_secrets=job_secrets("b", [link], run)), "b"), link)
    if impostor == "wrong secret":
        guard = net.guard([link], Credentials(run_secrets={"a": "guessed"}), local="a")
        client = net.client(guard, link, link.endpoint)
    elif impostor == "other stage":  # c with its own, valid secret, dialing a's link
        fake = _link("c", "b", link.endpoint)
        guard = net.guard([fake], Credentials(run_secrets={"c": run["c"]}), local="c")
        client = net.client(guard, fake, link.endpoint)
    else:
        client = net.client(None, link, link.endpoint)
    client.send(b"EndOfStream")
    reasons = ("wrong_mechanism", "hung_up") if impostor == "no credentials" else ("denied",)
    assert net.refusals.wait_for("a->b", reasons), net.refusals.seen
    assert _recv(server, 0.3) is None


def test_link_passwords_differ_per_link_and_per_run() -> None:
    one, two = new_run_secrets(["a"]), new_run_secrets(["a"])
    assert one["a"] != two["a"] and len(one["a"]) >= 40
    assert link_password(one["a"], "a->b") != link_password(one["a"], "a->c")
    assert link_password(one["a"], "a->b") == link_password(one["a"], "a->b")


# -- inproc and guard errors ------------------------------------------------------------------------
def test_inproc_links_run_without_a_mechanism_or_threads(net: _Net) -> None:
    link = _link("a", "b", "inproc://amodal-test/a--b")
    before = {t.name for t in threading.enumerate()}
    guard = net.guard([link], Credentials(), local=None)
    assert guard.mechanism(link) == "none"
    server = net.server(guard, link)
    net.client(guard, link, link.endpoint).send(b"x")
    frames = _recv(server, 3.0)
    assert frames is not None and frames[-1].bytes == b"x"
    assert {t.name for t in threading.enumerate()} == before


def test_guard_refuses_what_it_cannot_secure(tmp_path: Path) -> None:
    context = zmq.Context()
    try:
        tcp = _link("a", "b", "tcp://127.0.0.1:*")
        with pytest.raises(ValueError, match=r"link a->b: transport.kind: tcp links need security.keys_dir"):
            LinkGuard(context, [tcp], Credentials())
        ipc = _link("a", "b", f"ipc://{tmp_path}/a--b.sock")
        with pytest.raises(ValueError, match=r"link a->b: no run secret for stage 'a'"):
            LinkGuard(context, [ipc], Credentials(), local="a")
        keys = _keys(tmp_path, "a")
        with pytest.raises(ValueError, match=r"no public key for stage 'b'"):
            LinkGuard(context, [tcp], Credentials(keys_dir=keys), local="a")
        with pytest.raises(ValueError, match="both set"):
            Credentials(keys_dir=keys, insecure=True)
        with LinkGuard(context, [tcp], Credentials(insecure=True), local="a") as guard:
            sock = context.socket(zmq.ROUTER)
            with pytest.raises(ValueError, match=r"link a->b: this process does not receive on it"):
                guard.server(sock, tcp)
            sock.close(linger=0)
        with pytest.raises(RuntimeError, match="closed"):
            guard.client(context.socket(zmq.DEALER), tcp)
    finally:
        context.destroy(linger=0)


def test_close_stops_every_thread(tmp_path: Path) -> None:
    context = zmq.Context()
    before = {t.ident for t in threading.enumerate()}
    link = _link("a", "b", "tcp://127.0.0.1:*")
    guard = LinkGuard(context, [link], Credentials(keys_dir=_keys(tmp_path, "host")))
    server = context.socket(zmq.ROUTER)
    guard.server(server, link)
    server.bind(link.endpoint)
    assert {t.ident for t in threading.enumerate()} - before  # ZAP handler and monitor are running
    server.close(linger=0)
    guard.close()
    guard.close()  # idempotent
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before
    context.term()  # would hang if the guard left a socket open


# -- key files --------------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_keys_modes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "keys"
    made = make_keys(folder, ["detect", "host"])
    assert [p.name for p in made] == ["detect.key", "detect.key_secret", "host.key", "host.key_secret"]
    assert _mode(folder) == 0o700
    assert {_mode(p) for p in made if p.suffix == ".key_secret"} == {0o600}
    assert {_mode(p) for p in made if p.suffix == ".key"} == {0o644}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in made)  # no staging left
    public, secret = zmq.auth.load_certificate(folder / "detect.key_secret")
    assert zmq.auth.load_certificate(folder / "detect.key") == (public, None) and secret
    with pytest.raises(FileExistsError, match=r"detect\.key.*--overwrite"):
        make_keys(folder, ["track", "detect"])
    assert not (folder / "track.key").exists()  # nothing written when refusing
    assert make_keys(folder, ["detect"], overwrite=True)
    assert zmq.auth.load_certificate(folder / "detect.key")[0] != public
    with pytest.raises(ValueError, match="bad key name"):
        make_keys(folder, ["../evil"])


def test_keys_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="amodal")
    add_keys_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["keys", "--dir", str(tmp_path / "k"), "detect", "track"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "k" / f) for f in ("detect.key", "detect.key_secret", "track.key",
                                                      "track.key_secret")]  # fmt: skip
    assert args.handler(args) == 2
    assert "already exist" in capsys.readouterr().err
    again = parser.parse_args(["keys", "--dir", str(tmp_path / "k"), "detect", "--overwrite"])
    assert again.handler(again) == 0


# -- config checks ----------------------------------------------------------------------------------
def test_security_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="both set"):
        SecurityConfig(keys_dir="/k", insecure=True)
    with pytest.raises(ValidationError, match="extra"):
        SecurityConfig.model_validate({"key": "inline-secret"})
    assert all(f.description for f in SecurityConfig.model_fields.values())


def test_check_security_messages(tmp_path: Path) -> None:
    assert check_security("tcp", SecurityConfig(), ["a"]) == [TCP_NEEDS_SECURITY]
    assert TCP_NEEDS_SECURITY == (
        "transport.kind: tcp links need security.keys_dir (CURVE keys, see amodal keys) "
        "or security.insecure: true"
    )
    assert check_security("tcp", SecurityConfig(insecure=True), ["a"]) == []
    assert check_security("ipc", SecurityConfig(), ["a"]) == []
    folder = tmp_path / "keys"
    assert "is not a folder" in check_security("tcp", SecurityConfig(keys_dir=str(folder)), ["a"])[0]
    make_keys(folder, ["track"])
    security = SecurityConfig(keys_dir=str(folder))
    assert check_security("tcp", security, ["detect"], files=False) == []
    assert check_security("tcp", security, ["detect"]) == [
        f"security.keys_dir: {folder}: no key pair for stage 'detect' (detect.key_secret) or host "
        f"(host.key_secret); make them with: amodal keys --dir {folder} detect"
    ]
    (folder / "track.key_secret").unlink()  # only track's public key: track runs elsewhere
    assert check_security("tcp", security, [], peer_names=["track"]) == []
    assert "only the public key of stage 'track'" in check_security("tcp", security, ["track"])[0]
    make_keys(folder, ["host"])
    assert check_security("tcp", security, ["detect", "sink"], peer_names=["track"]) == []
    (folder / "host.key_secret").chmod(0o644)
    assert check_security("tcp", security, ["detect", "sink"]) == [
        f"security.keys_dir: {folder}: {folder / 'host.key_secret'} is readable by group/others "
        f"(mode 0644); chmod 600 {folder / 'host.key_secret'}"
    ]
    context = zmq.Context()
    assert "a stage is named 'host'" in check_security("tcp", security, ["detect"], peer_names=["host"])[0]
    with pytest.raises(ValueError, match="chmod 600"):
        LinkGuard(context, [_link("detect", "sink", "tcp://127.0.0.1:*")], Credentials(keys_dir=folder))
    context.term()


def test_ensure_private_dir(tmp_path: Path) -> None:
    made = ensure_private_dir(tmp_path / "a" / "ipc")
    assert made.is_dir() and _mode(made) == 0o700
    assert ensure_private_dir(made) == made
    made.chmod(0o755)
    with pytest.raises(ConfigError, match=r"transport\.ipc_dir: .*\(mode 0755\).*chmod 700"):
        ensure_private_dir(made)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"transport\.ipc_dir: .* not a folder"):
        ensure_private_dir(tmp_path / "file")
