"""Turn a GraphConfig's ``inputs`` into concrete links with endpoints for the chosen transport.

Endpoint naming is per runtime (``inproc://amodal-<run id>/up--down``, ``ipc://<private dir>/up--down``)
so several pipelines can run side by side in one process or on one host without clashing.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pipeline.graph_settings import GraphConfig
from pipeline.transport import Link
from pipeline.wire import wire_names

__all__ = ["resolve_links", "free_tcp_port"]


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it); used for automatic tcp:// endpoints."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def resolve_links(graph: GraphConfig, run_id: str, ipc_dir: str | Path | None = None) -> list[Link]:
    """All links of the graph, in config order, with policy/hwm defaults applied and endpoints set.

    tcp links without an explicit endpoint get ``tcp://<tcp_host>:*`` in embedded mode (the runtime
    binds a random port, ``:*``, and rewrites the endpoint) and a free port picked now in process mode.
    """
    kind = graph.transport_kind
    links: list[Link] = []
    for spec in graph.stages:
        accepts = wire_names(spec.stage_class.accepts)
        for item in spec.input_specs():
            tag = f"{item.source}--{spec.name}"
            if kind == "inproc":
                endpoint = f"inproc://amodal-{run_id}/{tag}"
            elif kind == "ipc":
                if ipc_dir is None:
                    raise ValueError("ipc transport needs a folder for its socket files")
                endpoint = f"ipc://{Path(ipc_dir) / tag}.sock"
            elif item.endpoint is not None:
                endpoint = item.endpoint
            elif graph.mode == "embedded":
                endpoint = f"tcp://{graph.transport.tcp_host}:*"
            else:
                endpoint = f"tcp://{graph.transport.tcp_host}:{free_tcp_port(graph.transport.tcp_host)}"
            links.append(
                Link(
                    upstream=item.source,
                    downstream=spec.name,
                    endpoint=endpoint,
                    policy=item.policy or graph.links.policy,
                    hwm=item.hwm or graph.links.hwm,
                    accepts=accepts,
                )
            )
    return links
