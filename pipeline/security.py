"""Who may connect to a link: authenticated (and on tcp, encrypted) ZeroMQ links between stages.

Every link is one ZeroMQ connection. The downstream stage binds (it is the *server* of the security
handshake), the upstream stage connects (the *client*). The link's endpoint decides the mechanism
(:func:`link_mechanism`):

``tcp://`` (stages on several hosts): CURVE
    Every stage has a key pair in ``security.keys_dir`` (made by ``amodal keys``, the
    ``zmq.auth.create_certificates`` format: ``<name>.key`` public, ``<name>.key_secret`` secret, 0600).
    A stage whose name has a file there uses its own pair; otherwise it uses the shared ``host`` pair.
    So "one pair per host" means copying one ``host`` pair to every host, and "one pair per stage"
    means one pair per stage name, with each host holding the secrets of its own stages and the
    public keys of their peers. The server end of a link proves itself with the downstream stage's
    secret key: the client pins the downstream's public key and sends nothing to an impostor. It
    accepts exactly one client key, the upstream stage's public key. With per-stage pairs even a valid
    key of another stage of the graph cannot send on a link that is not its own. With a shared
    ``host`` pair the boundary is "holds the host key". The traffic is encrypted and authenticated.
    Messages carry ``User-Id`` = the name of the key that connected (the upstream stage, or
    ``host``). Plain tcp needs an explicit ``security.insecure: true``.
``ipc://`` (one host, process mode): PLAIN with per-run secrets
    The socket files live in a private folder (0700, :func:`ensure_private_dir`), so only this user
    can connect at all. On top of that, the supervisor makes one secret per stage for each run
    (:func:`new_run_secrets`) and hands each stage process what it needs in its job, which is JSON on
    stdin and never argv, environment or disk (:func:`job_secrets`). A link's password is derived from
    its upstream's secret and the link name (:func:`link_password`). The downstream must know that
    password, but it cannot use it on any other link. The server accepts only username = the upstream
    stage with that password. So only the declared sender of a link can connect to it, and only that
    sender can send control messages (EndOfStream, StageDone, ...) on it. Every message carries
    ``User-Id`` = the upstream stage name. PLAIN does not encrypt: privacy within the host comes from
    the folder's mode.
``inproc://`` (embedded mode: one process, threads): no mechanism
    ZeroMQ runs no security handshake on inproc. Only sockets of the same context (this process) can
    reach an inproc endpoint, so there is no peer to authenticate.

:class:`LinkGuard` (one per process, that is one per ZeroMQ context) applies this to sockets. It owns
the ZAP handler, a ``zmq.auth.thread.ThreadAuthenticator`` subclass with one allow-list per link
(``zap_domain`` = link name). It counts refused peers through ``on_refused(link, reason)``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, Field, model_validator
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from pipeline.configfile import ConfigError

if TYPE_CHECKING:
    from pipeline.transport import Link

__all__ = [
    "HOST_KEY",
    "Mechanism",
    "RefusalReason",
    "SecurityConfig",
    "TCP_NEEDS_SECURITY",
    "KeyPair",
    "KeyDir",
    "Credentials",
    "LinkGuard",
    "link_mechanism",
    "check_security",
    "make_keys",
    "add_keys_parser",
    "keys_command",
    "new_run_secrets",
    "link_password",
    "job_secrets",
    "ensure_private_dir",
]

logger = logging.getLogger(__name__)

HOST_KEY = "host"  # name of the key pair shared by every stage of a host that has no pair of its own
Mechanism = Literal["none", "plain", "curve"]
# denied: ZAP said no (a key or credentials that are not the link's sender's).
# wrong_mechanism: the peer speaks another mechanism (a plain tcp peer on a CURVE link, say).
# bad_handshake: the handshake broke (a client that pinned a wrong server key, a corrupt handshake).
# hung_up: the peer left during the handshake. A plain tcp peer on a CURVE link often notices the
#   mismatch first and hangs up, so the receiver sees only this.
RefusalReason = Literal["denied", "wrong_mechanism", "bad_handshake", "hung_up"]
TCP_NEEDS_SECURITY = (
    "transport.kind: tcp links need security.keys_dir (CURVE keys, see amodal keys) "
    "or security.insecure: true"
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,47}$")  # stage names (pipeline.graph) and "host"
_POLL_MS = 50  # the monitor thread wakes this often to look at its stop flag and new sockets
_MONITOR_EVENTS = (  # MONITOR_STOPPED tells the monitor thread a watched socket was closed
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_MONITOR_STOPPED
)


class SecurityConfig(BaseModel):
    """The graph's ``security:`` section: who may connect to a link."""

    model_config = ConfigDict(extra="forbid")

    keys_dir: str | None = Field(
        default=None,
        description="Folder of CURVE key files made by `amodal keys` (<name>.key public, <name>.key_secret "
        "secret, mode 0600). A stage uses the pair named after it if there is one, else the pair named "
        "'host'. The receiver of a tcp:// link accepts only its sender stage's public key. Keys are "
        "never written in the YAML.",
    )
    insecure: bool = Field(
        default=False,
        description="Allow tcp:// links without CURVE: anyone who can reach the port can read and send "
        "messages. Only for a trusted network or a test.",
    )

    @model_validator(mode="after")
    def _one_choice(self) -> SecurityConfig:
        if self.insecure and self.keys_dir is not None:
            raise ValueError(
                "security.insecure: true and security.keys_dir are both set; tcp links either use CURVE "
                "keys or none (unset one, e.g. --set security.keys_dir=null)"
            )
        return self


def link_mechanism(endpoint: str, keys: bool, insecure: bool) -> Mechanism:
    """The mechanism a link with this endpoint uses; ValueError for tcp with neither keys nor insecure."""
    scheme = endpoint.partition("://")[0]
    if scheme == "inproc":
        return "none"  # ZeroMQ runs no security handshake on inproc
    if scheme == "ipc":
        return "plain"
    if scheme == "tcp":
        if keys:
            return "curve"
        if insecure:
            return "none"
        raise ValueError(TCP_NEEDS_SECURITY)
    raise ValueError(f"endpoint {endpoint!r}: expected inproc://, ipc:// or tcp://")


# -- key files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    """A CURVE key as loaded from ``keys_dir``; ``secret`` is None when only the public half is here."""

    name: str  # the name of the key: a stage name or "host"; it becomes the peer's User-Id
    public: bytes  # z85, 40 bytes
    secret: bytes | None = field(default=None, repr=False)


class KeyDir:
    """The folder of certificates ``amodal keys`` writes. Looks up a stage's pair or its public key.

    A stage's identity is its own name if any file of that name is there (``detect.key`` or
    ``detect.key_secret``), else ``host``. Every host resolves names the same way, so a client's
    pinned server key and a server's allowed client key agree.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.key", self.folder / f"{name}.key_secret"

    def key_name(self, stage: str) -> str:
        """``stage`` if the folder holds a key file of that name, else ``host``."""
        return stage if any(p.exists() for p in self._paths(stage)) else HOST_KEY

    def pair(self, stage: str) -> KeyPair:
        """The public and secret key ``stage`` proves itself with; ValueError says what is missing."""
        pair, problem = self._lookup(stage, secret=True)
        if problem:
            raise ValueError(problem)
        assert pair is not None
        return pair

    def public(self, stage: str) -> KeyPair:
        """The public key peers expect from ``stage``; ValueError says what is missing."""
        pair, problem = self._lookup(stage, secret=False)
        if problem:
            raise ValueError(problem)
        assert pair is not None
        return pair

    def problems(self, stage: str, secret: bool) -> list[str]:
        return [p for p in [self._lookup(stage, secret)[1]] if p]

    def _lookup(self, stage: str, secret: bool) -> tuple[KeyPair | None, str | None]:
        where = f"security.keys_dir: {self.folder}"
        if not self.folder.is_dir():
            return None, f"{where} is not a folder; make keys with: amodal keys --dir {self.folder} {stage}"
        name = self.key_name(stage)
        public_path, secret_path = self._paths(name)
        if secret:
            if not secret_path.exists():
                if name == stage:  # only the public key of this stage is here: its secret is elsewhere
                    return None, (
                        f"{where}: only the public key of stage {stage!r} is here ({public_path.name}), "
                        f"not its secret ({secret_path.name}); copy it from where it was made or make "
                        f"a new pair with: amodal keys --dir {self.folder} --overwrite {stage}"
                    )
                return None, (
                    f"{where}: no key pair for stage {stage!r} ({stage}.key_secret) or host "
                    f"({HOST_KEY}.key_secret); make them with: amodal keys --dir {self.folder} {stage}"
                )
            mode = stat.S_IMODE(secret_path.stat().st_mode)
            if mode & 0o077:
                return None, (
                    f"{where}: {secret_path} is readable by group/others (mode {mode:04o}); "
                    f"chmod 600 {secret_path}"
                )
            path = secret_path
        else:
            path = public_path if public_path.exists() else secret_path
            if not path.exists():
                return None, (
                    f"{where}: no public key for stage {stage!r} ({stage}.key) or host ({HOST_KEY}.key); "
                    f"copy {stage}.key from the host that runs {stage}, or make one with: "
                    f"amodal keys --dir {self.folder} {stage}"
                )
        try:
            public, secret_key = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            return None, f"{where}: {path} is not a ZeroMQ certificate ({exc})"
        if secret and not secret_key:
            return None, f"{where}: {path} holds no secret-key"
        return KeyPair(name, public, secret_key if secret else None), None


def check_security(
    transport_kind: str,
    security: SecurityConfig,
    stage_names: Iterable[str],
    peer_names: Iterable[str] = (),
    files: bool = True,
) -> list[str]:
    """Problems, one line each naming the key, that stop this host's links from being secured.

    ``stage_names`` run here and need a secret key. ``peer_names`` run elsewhere and are linked to
    them, so only their public keys are needed. ``files=False`` checks the config alone (for
    ``GraphConfig.check``). The key files are looked at only for tcp, the only transport that uses
    them.
    """
    if transport_kind != "tcp":
        return []
    if security.keys_dir is None:
        return [] if security.insecure else [TCP_NEEDS_SECURITY]
    if not files:
        return []
    keys = KeyDir(security.keys_dir)
    local = list(dict.fromkeys(stage_names))
    peer_names = list(peer_names)
    if HOST_KEY in local or HOST_KEY in peer_names:
        return [
            f"security.keys_dir: a stage is named {HOST_KEY!r}, the name of the key pair that "
            "stages without a pair of their own share; rename the stage"
        ]
    problems = [p for name in local for p in keys.problems(name, secret=True)]
    peers = [name for name in dict.fromkeys(peer_names) if name not in local]
    problems += [p for name in peers for p in keys.problems(name, secret=False)]
    return list(dict.fromkeys(problems))


def make_keys(folder: str | Path, names: Iterable[str], overwrite: bool = False) -> list[Path]:
    """Make a CURVE key pair per name (``amodal keys``). Returns ``[public, secret]`` paths per name.

    The folder is created 0700. Secret files are 0600 from the start: each pair is written into a
    private temporary folder next to them, then moved in place. An existing pair is kept (FileExistsError)
    unless ``overwrite``.
    """
    folder = Path(folder).expanduser()
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("name at least one key: a stage name, or 'host' (shared by a host's stages)")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"bad key name(s) {bad}: use stage names (a letter, then letters, digits, _ or -)")
    if not overwrite:
        existing = [str(p) for n in names for p in KeyDir(folder)._paths(n) if p.exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exist; add --overwrite to replace them "
                "(peers that hold the old public keys then need the new ones)"
            )
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask; make it exact
    made: list[Path] = []
    for name in names:
        staging = Path(tempfile.mkdtemp(prefix=".amodal-keys-", dir=folder))  # 0700
        try:
            public_tmp, secret_tmp = (Path(p) for p in zmq.auth.create_certificates(staging, name))
            secret_tmp.chmod(0o600)
            public_tmp.chmod(0o644)
            public_path, secret_path = folder / public_tmp.name, folder / secret_tmp.name
            os.replace(secret_tmp, secret_path)
            os.replace(public_tmp, public_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        made += [public_path, secret_path]
    return made


def add_keys_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``amodal keys --dir DIR NAME... [--overwrite]`` to the CLI. Its handler is :func:`keys_command`."""
    parser = subparsers.add_parser(
        "keys",
        help="make CURVE key pairs for tcp:// links (security.keys_dir)",
        description="Make ZeroMQ CURVE key pairs: NAME.key (public: copy it to the hosts of the stages "
        "this one talks to) and NAME.key_secret (secret, mode 0600: keep it on this host). Name a pair "
        "after a stage, or 'host' for one pair shared by every stage without its own.",
    )
    parser.add_argument("--dir", dest="keys_dir", required=True, metavar="DIR", help="key folder (made 0700)")
    parser.add_argument("names", nargs="+", metavar="NAME", help="stage names, or 'host'")
    parser.add_argument("--overwrite", action="store_true", help="replace existing pairs of these names")
    parser.set_defaults(handler=keys_command)
    return parser


def keys_command(args: argparse.Namespace) -> int:
    """Run ``amodal keys``: print each file made; exit 2 with one line on stderr if refused."""
    try:
        paths = make_keys(args.keys_dir, args.names, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"amodal: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"amodal: error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


# -- per-run secrets (ipc) ------------------------------------------------------------------------
def new_run_secrets(stage_names: Iterable[str]) -> dict[str, str]:
    """One fresh secret per stage for this run (the supervisor's, or the embedded runtime's for ipc)."""
    return {name: secrets.token_urlsafe(32) for name in stage_names}


def link_password(stage_secret: str, link_name: str) -> str:
    """The PLAIN password of one link, derived from its upstream stage's run secret."""
    return hmac.new(stage_secret.encode(), link_name.encode(), hashlib.sha256).hexdigest()


def job_secrets(stage: str, links: Iterable[Link], run_secrets: Mapping[str, str]) -> dict[str, str]:
    """What goes into ``stage``'s job: its own secret, and the password of each link it receives on.

    Keys are the stage name and link names (``up->down``). Stage names cannot contain ``>``, so the two
    never clash. A stage never learns another stage's secret.
    """
    out = {stage: run_secrets[stage]}
    for link in links:
        if link.downstream == stage:
            out[link.name] = link_password(run_secrets[link.upstream], link.name)
    return out


# -- the ipc folder -------------------------------------------------------------------------------
def ensure_private_dir(path: str | Path) -> Path:
    """Create the ipc socket folder 0700, or check that an existing one is private to this user.

    Socket files inherit the umask, so the folder is what keeps other users from connecting.
    ConfigError names ``transport.ipc_dir`` when an existing folder is open to others.
    """
    path = Path(path).expanduser()
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)
        return path
    if not path.is_dir():
        raise ConfigError(f"transport.ipc_dir: {path} exists and is not a folder")
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"transport.ipc_dir: {path} belongs to another user (uid {info.st_uid}); use a folder of "
            "your own, or leave transport.ipc_dir unset for a fresh private one"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"transport.ipc_dir: {path} is open to group/others (mode {mode:04o}), so other users could "
            f"connect to the links; chmod 700 {path}, or leave transport.ipc_dir unset for a fresh "
            "private folder"
        )
    return path


# -- the guard ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    """Where this process's link secrets come from."""

    keys_dir: Path | None = None  # tcp: CURVE key files
    insecure: bool = False  # tcp without CURVE
    run_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)  # ipc: see job_secrets

    def __post_init__(self) -> None:
        if self.insecure and self.keys_dir is not None:
            raise ValueError("insecure and keys_dir are both set; tcp links either use CURVE keys or none")

    @classmethod
    def from_config(
        cls, security: SecurityConfig, run_secrets: Mapping[str, str] | None = None
    ) -> Credentials:
        keys = Path(security.keys_dir).expanduser() if security.keys_dir is not None else None
        return cls(keys_dir=keys, insecure=security.insecure, run_secrets=dict(run_secrets or {}))


@dataclass(frozen=True)
class _Side:
    """How one end of one link authenticates, resolved before any socket exists."""

    mechanism: Mechanism
    own: KeyPair | None = None  # curve: this end's pair
    peer_key: bytes = b""  # curve: server end: the one client key allowed; client end: the pinned server key
    peer_name: str = ""  # curve: the name of peer_key (the peer's User-Id)
    username: str = ""  # plain: the upstream stage
    password: str = field(default="", repr=False)  # plain: link_password(...)


class LinkGuard:
    """Secures the link sockets of one process (one ZeroMQ context). See the module docstring.

    Use: construct it before any link socket. Call :meth:`server` on a receiving socket before
    ``bind`` and :meth:`client` on a sending socket before ``connect``. Call :meth:`close` after the
    link sockets are closed and before ``context.term()``. A server socket that outlives its guard
    refuses every peer (``ZAP_ENFORCE_DOMAIN``); it never falls open. The guard owns each secured
    socket's monitor (``zmq_socket_monitor``): another ``socket.monitor()`` call on it replaces
    the guard's, and refusals go uncounted.

    ``local`` names the stages this process runs: one stage name in process mode, a set with
    ``amodal run --only``, None for every stage (embedded). Only their ends of ``links`` are prepared.
    Every key and secret is loaded here, so a missing one fails before anything starts.
    ``on_refused(link_name, reason)`` is called, from the guard's monitor thread, for every refused
    handshake on a receiving socket.
    """

    def __init__(
        self,
        context: zmq.Context,
        links: Iterable[Link],
        credentials: Credentials,
        local: str | Collection[str] | None = None,
        on_refused: Callable[[str, RefusalReason], None] | None = None,
    ) -> None:
        wanted = None if local is None else ({local} if isinstance(local, str) else set(local))
        keys = KeyDir(credentials.keys_dir) if credentials.keys_dir is not None else None
        secrets_ = credentials.run_secrets
        self._servers: dict[str, _Side] = {}
        self._clients: dict[str, _Side] = {}
        for link in links:
            try:
                mechanism = link_mechanism(link.endpoint, keys is not None, credentials.insecure)
                if wanted is None or link.downstream in wanted:
                    self._servers[link.name] = _resolve(link, mechanism, keys, secrets_, server=True)
                if wanted is None or link.upstream in wanted:
                    self._clients[link.name] = _resolve(link, mechanism, keys, secrets_, server=False)
            except ValueError as exc:
                raise ValueError(f"link {link.name}: {exc}") from None
        self._closed = False
        self._auth: _LinkAuthenticator | None = None
        self._monitor: _RefusalMonitor | None = None
        secured = {name: side for name, side in self._servers.items() if side.mechanism != "none"}
        if secured:
            # The ZAP handler must be bound before the first secured socket binds.
            self._auth = _LinkAuthenticator(context, secured)
            self._auth.start()
        if secured or any(side.mechanism != "none" for side in self._clients.values()):
            self._monitor = _RefusalMonitor(context, on_refused)

    @classmethod
    def from_config(
        cls,
        context: zmq.Context,
        security: SecurityConfig,
        links: Iterable[Link],
        local: str | Collection[str] | None = None,
        run_secrets: Mapping[str, str] | None = None,
        on_refused: Callable[[str, RefusalReason], None] | None = None,
    ) -> LinkGuard:
        return cls(context, links, Credentials.from_config(security, run_secrets), local, on_refused)

    def mechanism(self, link: Link) -> Mechanism:
        """The mechanism this process uses on ``link`` (for logs and ``amodal check``)."""
        side = self._servers.get(link.name) or self._clients.get(link.name)
        if side is None:
            raise ValueError(f"link {link.name}: not a link of this process's stages")
        return side.mechanism

    def server(self, socket: zmq.Socket, link: Link) -> None:
        """Make ``socket`` (the receiving end of ``link``) accept only the link's sender. Call before bind."""
        side = self._side(self._servers, link, "receive on")
        if side.mechanism == "none":
            return
        socket.zap_domain = link.name.encode()
        try:  # refuse every peer if no ZAP handler answers (the guard was closed before this socket)
            socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        except (AttributeError, zmq.ZMQError):  # a libzmq without it admits anyone once ZAP is gone
            logger.debug("link=%s: no ZAP_ENFORCE_DOMAIN; close the guard after the sockets", link.name)
        if side.mechanism == "curve":
            assert side.own is not None and side.own.secret is not None
            socket.curve_secretkey = side.own.secret
            socket.curve_publickey = side.own.public
            socket.curve_server = True
        else:
            socket.plain_server = True
        assert self._monitor is not None
        self._monitor.watch(socket, link.name, server=True)

    def client(self, socket: zmq.Socket, link: Link) -> None:
        """Give ``socket`` (the sending end of ``link``) its sender's credentials. Call before connect."""
        side = self._side(self._clients, link, "send on")
        if side.mechanism == "none":
            return
        if side.mechanism == "curve":
            assert side.own is not None and side.own.secret is not None
            socket.curve_secretkey = side.own.secret
            socket.curve_publickey = side.own.public
            socket.curve_serverkey = side.peer_key
        else:
            socket.plain_username = side.username.encode()
            socket.plain_password = side.password.encode()
        assert self._monitor is not None
        self._monitor.watch(socket, link.name, server=False)

    def close(self) -> None:
        """Stop the monitor and ZAP threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            self._monitor.close()
        if self._auth is not None:
            self._auth.stop()

    def __enter__(self) -> LinkGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _side(self, sides: dict[str, _Side], link: Link, verb: str) -> _Side:
        if self._closed:
            raise RuntimeError("this LinkGuard is closed")
        side = sides.get(link.name)
        if side is None:
            raise ValueError(f"link {link.name}: this process does not {verb} it (not in the guard's links)")
        return side


def _plain_password(link: Link, run_secrets: Mapping[str, str]) -> str:
    if link.name in run_secrets:
        return run_secrets[link.name]
    if link.upstream in run_secrets:
        return link_password(run_secrets[link.upstream], link.name)
    raise ValueError(
        f"no run secret for stage {link.upstream!r} (the supervisor passes them in the job, see "
        "job_secrets; an embedded runtime makes them with new_run_secrets)"
    )


def _resolve(
    link: Link, mechanism: Mechanism, keys: KeyDir | None, run_secrets: Mapping[str, str], server: bool
) -> _Side:
    """One end of a link: the server end is the downstream stage, the client end the upstream one."""
    if mechanism == "curve":
        assert keys is not None
        own, peer = (link.downstream, link.upstream) if server else (link.upstream, link.downstream)
        peer_key = keys.public(peer)
        return _Side(mechanism, own=keys.pair(own), peer_key=peer_key.public, peer_name=peer_key.name)
    if mechanism == "plain":
        return _Side(mechanism, username=link.upstream, password=_plain_password(link, run_secrets))
    return _Side(mechanism)


class _LinkAuthenticator(ThreadAuthenticator):
    """ZAP handler that allows exactly one peer per link (ZAP domain = link name), nothing else.

    It replaces pyzmq's allow-lists. Passwords are compared in constant time and never logged
    (pyzmq's PLAIN check logs them at DEBUG). A CURVE peer's User-Id is the name of its key, not the
    z85 key. Unknown domains, NULL with a domain, and GSSAPI are all denied.
    """

    def __init__(self, context: zmq.Context, sides: Mapping[str, _Side]) -> None:
        super().__init__(context, log=logging.getLogger(f"{__name__}.zap"))
        self._plain = {name: (s.username, s.password) for name, s in sides.items() if s.mechanism == "plain"}
        self._curve = {name: s.peer_key for name, s in sides.items() if s.mechanism == "curve"}
        # z85 public key -> the name of the file it came from (the upstream stage, or "host")
        self._key_names = {s.peer_key: s.peer_name for s in sides.values() if s.mechanism == "curve"}

    def _authenticate_plain(self, domain: str, username: str, password: str) -> tuple[bool, bytes]:
        expected = self._plain.get(domain)
        if expected is None:
            return False, b"not a PLAIN link"
        ok_user = hmac.compare_digest(username.encode(), expected[0].encode())
        ok_password = hmac.compare_digest(password.encode(), expected[1].encode())
        if ok_user and ok_password:
            return True, b"OK"
        return False, b"not the sender of this link"

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        expected = self._curve.get(domain)
        if expected is None:
            return False, b"not a CURVE link"
        if hmac.compare_digest(z85.encode(client_key), expected):
            return True, b"OK"
        return False, b"not the sender's key"

    def _authenticate_gssapi(self, domain: str, principal: bytes) -> tuple[bool, bytes]:
        return False, b"GSSAPI is not used"

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) >= 6 and msg[5] == b"NULL":  # only our sockets set a domain; NULL is never ours
            self._send_zap_reply(msg[1], b"400", b"NULL is not allowed on a secured link")
            return
        await super().handle_zap_message(msg)

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = z85.encode(client_public_key)
        return self._key_names.get(key, key.decode("ascii"))


class _RefusalMonitor:
    """Watches link sockets for failed handshakes; one thread per guard.

    Why a socket monitor and not only the ZAP handler: ZAP is asked only once a peer speaks the
    link's mechanism correctly. libzmq drops a plain tcp peer on a CURVE link (mechanism mismatch)
    and a client that pinned the wrong server key (crypto failure) before ZAP sees them. Every
    refusal raises a monitor event on the server socket: ``EVENT_HANDSHAKE_FAILED_AUTH`` when ZAP
    said no, ``EVENT_HANDSHAKE_FAILED_PROTOCOL`` for a broken handshake, and
    ``EVENT_HANDSHAKE_FAILED_NO_DETAIL`` when the peer hung up first. On a receiving socket each
    event is counted (``on_refused``). On a sending socket it means *this* process was refused (its
    keys are wrong), so it is only logged.
    """

    _ids = itertools.count()

    def __init__(self, context: zmq.Context, on_refused: Callable[[str, RefusalReason], None] | None) -> None:
        self._context = context
        self._on_refused = on_refused
        self._pending: list[tuple[zmq.Socket, str, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._logged: set[tuple[str, bool, str]] = set()
        self._thread = threading.Thread(target=self._run, name="amodal-link-guard", daemon=True)
        self._thread.start()

    def watch(self, socket: zmq.Socket, link: str, server: bool) -> None:
        """Start reporting failed handshakes of ``socket`` (call from the socket's own thread)."""
        address = f"inproc://amodal-link-guard-{os.getpid()}-{id(self)}-{next(self._ids)}"
        socket.monitor(address, _MONITOR_EVENTS)
        pipe = self._context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.connect(address)
        with self._lock:  # the monitor thread takes the pipe over from here
            if self._stop.is_set():
                pipe.close()
                return
            self._pending.append((pipe, link, server))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            for pipe, _, _ in self._pending:
                pipe.close()
            self._pending.clear()

    def _run(self) -> None:
        watched: dict[zmq.Socket, tuple[str, bool]] = {}
        poller = zmq.Poller()
        try:
            while not self._stop.is_set():
                with self._lock:
                    for pipe, link, server in self._pending:
                        watched[pipe] = (link, server)
                        poller.register(pipe, zmq.POLLIN)
                    self._pending.clear()
                if not watched:
                    self._stop.wait(_POLL_MS / 1000)
                    continue
                for pipe, _ in poller.poll(_POLL_MS):
                    try:
                        event = recv_monitor_message(pipe, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    if event["event"] == zmq.EVENT_MONITOR_STOPPED:  # the watched socket was closed
                        poller.unregister(pipe)
                        del watched[pipe]
                        pipe.close()
                        continue
                    self._refused(*watched[pipe], int(event["event"]), int(event["value"]))
        finally:
            for pipe in watched:
                pipe.close()

    def _refused(self, link: str, server: bool, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason: RefusalReason = "denied"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            reason = "hung_up"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            reason = "wrong_mechanism"
        else:
            reason = "bad_handshake"
        first = (link, server, reason) not in self._logged and (server or reason != "hung_up")
        self._logged.add((link, server, reason))
        log = logger.warning if first else logger.debug
        more = " (further ones are only counted)" if first else ""
        if server:
            log("link=%s refused a peer: %s (code %d)%s", link, _EXPLAIN[reason], value, more)
            if self._on_refused is not None:
                try:
                    self._on_refused(link, reason)
                except Exception:  # a broken counter must not stop the monitor
                    logger.exception("link=%s: on_refused callback failed", link)
        else:
            log(
                "link=%s: the receiver refused this sender: %s (code %d); check its keys/secret%s",
                link,
                _EXPLAIN[reason],
                value,
                more,
            )


_EXPLAIN: dict[str, str] = {
    "denied": "its key or credentials are not the link's sender's",
    "wrong_mechanism": "it speaks another security mechanism (plain tcp on a CURVE link?)",
    "bad_handshake": "the security handshake failed (a wrong pinned server key?)",
    "hung_up": "it hung up during the security handshake (a plain tcp peer on a CURVE link?)",
}
