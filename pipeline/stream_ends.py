"""When a stream has ended on every input link of a stage (fan-in safe EndOfStream)."""

from __future__ import annotations

from pipeline.graph_settings import GraphConfig
from pipeline.messages import EndOfStream
from pipeline.transport import Link

__all__ = ["StreamEnds"]


class StreamEnds:
    """Decides when a stream has ended on *every* input link that will carry its EndOfStream.

    The runtime forwards EndOfStream on every link, so a stream's marker reaches a stage once per
    input path from the source that produced it (twice in a diamond src -> a, b -> sink). A stream
    first seen on link L is expected to end on every input link whose upstream sources overlap L's;
    links from unrelated sources (a second camera's ingest) are not waited for. A link that finishes
    (StageDone) counts as ended for all its streams.
    """

    def __init__(self, graph: GraphConfig, links: dict[str, Link]) -> None:
        self._sources = {name: _sources_upstream(graph, link.upstream) for name, link in links.items()}
        self._expected: dict[str, set[str]] = {}
        self._ended: dict[str, set[str]] = {}
        self._first_eos: dict[str, EndOfStream] = {}

    def seen(self, link: str, stream: str) -> None:
        if stream not in self._expected:
            mine = self._sources[link]
            self._expected[stream] = {name for name, srcs in self._sources.items() if srcs & mine} | {link}
            self._ended[stream] = set()

    def end(self, link: str, eos: EndOfStream, done_links: set[str]) -> EndOfStream | None:
        self.seen(link, eos.stream_id)
        self._ended[eos.stream_id].add(link)
        self._first_eos.setdefault(eos.stream_id, eos)
        return self._complete(eos.stream_id, done_links)

    def link_done(self, link: str, done_links: set[str]) -> list[EndOfStream]:
        finished = []
        for stream in [s for s, expected in self._expected.items() if link in expected]:
            eos = self._complete(stream, done_links)
            if eos is not None:
                finished.append(eos)
        return finished

    def _complete(self, stream: str, done_links: set[str]) -> EndOfStream | None:
        if not self._expected[stream] <= self._ended[stream] | done_links:
            return None
        del self._expected[stream], self._ended[stream]
        eos = self._first_eos.pop(stream, None)
        return eos or EndOfStream(stream_id=stream, reason="stopped", detail="upstream finished without one")


def _sources_upstream(graph: GraphConfig, name: str) -> frozenset[str]:
    """The source stages whose messages can reach stage ``name`` (itself if it is a source)."""
    spec = graph.stage(name)
    inputs = spec.input_specs()
    if not inputs:
        return frozenset({name})
    found: set[str] = set()
    for item in inputs:
        found |= _sources_upstream(graph, item.source)
    return frozenset(found)
