"""The graph config's settings models: stage entries, links, transport and runtime sections, and
``GraphConfig`` with its cross-stage checks (names, inputs, sources, cycles, message types).

``GraphConfig.stages`` is typed per registered stage type at load time (``graph_schema``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.messages import CONTROL_TYPES
from pipeline.security import SecurityConfig, check_security
from pipeline.stage import SourceStage

__all__ = [
    "Policy",
    "InputSpec",
    "TransportConfig",
    "LinkDefaults",
    "DeliveryConfig",
    "MetricsConfig",
    "SupervisorConfig",
    "ShutdownConfig",
    "LoggingConfig",
    "StageSpecBase",
    "GraphConfig",
    "TOP_LEVEL_KEYS",
]

Policy = Literal["block", "drop_oldest"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """One incoming link, when it needs more than the upstream's name."""

    source: str = Field(description="Name of the upstream stage this link comes from.")
    policy: Policy | None = Field(
        default=None,
        description="block: the sender waits when the link is full (lossless, for replay). drop_oldest: the "
        "receiver discards the oldest queued frame to keep latency bounded (live cameras). "
        "Default: links.policy.",
    )
    hwm: int | None = Field(
        default=None, ge=1, le=100_000, description="Messages the link may buffer (default: links.hwm)."
    )
    endpoint: str | None = Field(
        default=None,
        description="Explicit tcp:// endpoint the downstream stage binds and the upstream connects to "
        "(stages on other hosts). Only with transport.kind=tcp; default: an automatic port.",
    )


class TransportConfig(_Strict):
    """Which ZeroMQ transport the links use."""

    kind: Literal["auto", "inproc", "ipc", "tcp"] = Field(
        default="auto",
        description="auto = inproc:// in embedded mode, ipc:// in process mode. tcp:// for stages on "
        "several hosts (or to test the network path on one).",
    )
    ipc_dir: str | None = Field(
        default=None, description="Folder for ipc:// socket files (default: a fresh private temp folder)."
    )
    tcp_host: str = Field(default="127.0.0.1", description="Host the automatic tcp:// endpoints bind to.")


class LinkDefaults(_Strict):
    """Defaults for every link that does not set its own policy/hwm."""

    policy: Policy = Field(default="block", description="Default link policy: block or drop_oldest.")
    hwm: int = Field(default=16, ge=1, le=100_000, description="Default messages a link may buffer.")


class DeliveryConfig(_Strict):
    """Acknowledged delivery on every link (pipeline.delivery): what a sender keeps until it is done."""

    window: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Messages a sender keeps unacknowledged per link before it waits (what a restarted "
        "receiver gets again).",
    )
    window_mb: float = Field(
        default=256.0, gt=0, description="The same bound in megabytes of kept message buffers per link."
    )
    flush_interval_s: float = Field(
        default=0.25,
        gt=0,
        description="A sink makes what it took durable (flush/commit) at least this often while messages "
        "flow, and whenever its inputs go quiet; only then are they acknowledged.",
    )
    ping_s: float = Field(
        default=0.5,
        gt=0,
        description="A sender's heartbeat: it pings its receiver this often (alive though busy; a "
        "restarted receiver then asks for what is unacknowledged).",
    )


class MetricsConfig(_Strict):
    """Prometheus endpoint."""

    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the /metrics HTTP endpoint; 0 = off. In process mode the supervisor serves "
        "this port and stage number i (0-based, config order) serves port + 1 + i.",
    )
    host: str = Field(default="127.0.0.1", description="Address the metrics endpoint listens on.")


class SupervisorConfig(_Strict):
    """Process mode: restarting crashed stage processes."""

    max_restarts: int = Field(default=5, ge=0, description="Restarts per stage before the pipeline gives up.")
    backoff_initial_s: float = Field(default=0.5, gt=0, description="Wait before the first restart.")
    backoff_max_s: float = Field(default=30.0, gt=0, description="Longest wait between restarts (doubling).")
    healthy_after_s: float = Field(
        default=600.0,
        gt=0,
        description="A stage that ran this long before it crashed starts a new count: max_restarts and the "
        "backoff limit crashes in a row, not over the life of a box.",
    )


class ShutdownConfig(_Strict):
    """How the graph drains when sources end or a stop is requested."""

    drain_timeout_s: float = Field(
        default=60.0, gt=0, description="After a stop request, the longest wait for every stage to drain."
    )
    idle_drain_s: float = Field(
        default=10.0,
        gt=0,
        description="After a stop request, a stage whose inputs stay silent this long (no message and no "
        "heartbeat: the upstream is gone) finishes on its own; a busy upstream keeps it waiting.",
    )
    linger_s: float = Field(
        default=2.0,
        ge=0,
        description="On a clean exit, how long a socket may keep flushing its last messages.",
    )
    max_consecutive_errors: int = Field(
        default=20, ge=1, description="A stage whose process() raises this many times in a row has failed."
    )


class LoggingConfig(_Strict):
    """Structured logs on stderr."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    format: Literal["kv", "json"] = Field(default="kv", description="key=value lines or JSON lines.")


class StageSpecBase(_Strict):
    """Fields every stage entry has; ``type`` and ``config`` come from the registered stage class."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]{0,47}$", description="Unique stage name.")
    inputs: list[str | InputSpec] = Field(
        default_factory=list, description="Upstream stage names (or {source, policy, hwm, endpoint})."
    )

    def input_specs(self) -> list[InputSpec]:
        return [InputSpec(source=i) if isinstance(i, str) else i for i in self.inputs]


#: a graph's own sections: no stage may take one of these names (``--set`` routing needs that)
TOP_LEVEL_KEYS = (
    "mode",
    "transport",
    "security",
    "delivery",
    "links",
    "metrics",
    "supervisor",
    "shutdown",
    "logging",
    "output_dir",
    "stages",
)


class GraphConfig(_Strict):
    """A whole pipeline: stages and the runtime settings they run under."""

    plugins: list[str] = Field(
        default_factory=list,
        description="Extra Python modules to import before the graph is built, so stage types they "
        "register with @register_stage can be used (your own stages outside the stages/ package).",
    )
    mode: Literal["embedded", "process"] = Field(
        default="embedded",
        description="embedded: every stage a thread in one process (replay). process: one supervised "
        "process per stage (edge box; a crashed stage is restarted).",
    )
    transport: TransportConfig = Field(default_factory=TransportConfig, description="Link transport.")
    links: LinkDefaults = Field(default_factory=LinkDefaults, description="Default link policy and size.")
    security: SecurityConfig = Field(
        default_factory=SecurityConfig,
        description="Who may connect to a link: CURVE keys for tcp:// links (or insecure: true); ipc:// "
        "links use per-run secrets, inproc:// needs none.",
    )
    delivery: DeliveryConfig = Field(
        default_factory=DeliveryConfig, description="Acknowledged delivery: windows and flush cadence."
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint.")
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig, description="Process restarts.")
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig, description="Draining and errors.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log level and format.")
    output_dir: str = Field(
        default="out", description="Folder that relative sink paths are resolved against."
    )
    stages: list[Any] = Field(min_length=1, description="The stages, each {name, type, inputs, config}.")

    def check(self) -> None:
        """Cross-stage checks (names, inputs, sources, cycles, transport); ValueError says which stage."""
        names = [s.name for s in self.stages]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                raise ValueError(f"stages[{i}].name {name!r} is used twice; stage names must be unique")
            if name in TOP_LEVEL_KEYS:
                raise ValueError(f"stages[{i}].name {name!r} clashes with a top-level key; rename the stage")
            seen.add(name)
        kind = self.transport_kind
        if self.mode == "process" and kind == "inproc":
            raise ValueError("transport.kind 'inproc' only works with mode 'embedded'; use ipc or tcp")
        for problem in check_security(kind, self.security, names, files=False):
            raise ValueError(problem)
        if self.delivery.ping_s * 2 > self.shutdown.idle_drain_s:
            raise ValueError(
                f"delivery.ping_s {self.delivery.ping_s:g} must be at most half of shutdown.idle_drain_s "
                f"{self.shutdown.idle_drain_s:g}: a busy upstream's heartbeat would pass for silence"
            )
        for i, spec in enumerate(self.stages):
            is_source = issubclass(spec.stage_class, SourceStage)
            inputs = spec.input_specs()
            if is_source and inputs:
                raise ValueError(
                    f"stages[{i}] ({spec.name}): a {spec.type} stage is a source and takes no inputs"
                )
            if not is_source and not inputs:
                raise ValueError(f"stages[{i}] ({spec.name}): inputs is empty; name the upstream stage(s)")
            sources = [s.source for s in inputs]
            for src in sources:
                if src not in seen:
                    raise ValueError(
                        f"stages[{i}] ({spec.name}).inputs: no stage named {src!r}; have {names}"
                    )
                if src == spec.name:
                    raise ValueError(f"stages[{i}] ({spec.name}).inputs: a stage cannot feed itself")
            if len(set(sources)) != len(sources):
                raise ValueError(f"stages[{i}] ({spec.name}).inputs: {sources} lists a stage twice")
            for link in inputs:
                if link.endpoint is not None and kind != "tcp":
                    raise ValueError(
                        f"stages[{i}] ({spec.name}).inputs: endpoint {link.endpoint!r} "
                        "needs transport.kind=tcp"
                    )
                if link.endpoint is not None and not link.endpoint.startswith("tcp://"):
                    raise ValueError(f"stages[{i}] ({spec.name}).inputs: endpoint must be tcp://host:port")
        self._check_acyclic()
        self._check_types()

    def _check_types(self) -> None:
        """A link on which nothing the upstream emits is accepted downstream is a wiring mistake."""
        by_name = {s.name: s for s in self.stages}
        for spec in self.stages:
            # control messages (EndOfStream, TrackEnd, ...) pass every link: only data decides
            accepts = [t for t in spec.stage_class.accepts if t not in CONTROL_TYPES]
            for item in spec.input_specs():
                emits = by_name[item.source].stage_class.emits
                if emits is None or not accepts:
                    continue
                emits = [t for t in emits if t not in CONTROL_TYPES]
                if not set(accepts) & set(emits):
                    have = ", ".join(t.__name__ for t in emits) or "nothing"
                    want = ", ".join(t.__name__ for t in accepts)
                    raise ValueError(
                        f"{spec.name}.inputs: {item.source} ({by_name[item.source].type}) emits {have}, but "
                        f"{spec.name} ({spec.type}) accepts {want}; nothing would flow on that link"
                    )

    def _check_acyclic(self) -> None:
        upstream = {s.name: [i.source for i in s.input_specs()] for s in self.stages}
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 1:
                raise ValueError(f"the stage graph has a cycle: {' -> '.join(path + [name])}")
            if state.get(name) == 2:
                return
            state[name] = 1
            for up in upstream[name]:
                visit(up, path + [name])
            state[name] = 2

        for name in upstream:
            visit(name, [])

    @property
    def transport_kind(self) -> Literal["inproc", "ipc", "tcp"]:
        if self.transport.kind == "auto":
            return "inproc" if self.mode == "embedded" else "ipc"
        return self.transport.kind

    def stage(self, name: str) -> Any:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def downstream_of(self, name: str) -> list[Any]:
        return [s for s in self.stages if any(i.source == name for i in s.input_specs())]
