"""Identify stage: one identity per person, across tracks and cameras, from the occlude-them-all gallery.

One instance is fed by every stream of a graph, so identities cross cameras. A track's identity comes
from its scheduled crops, not from one crop: each graded crop (the grade stage's embedding and grade,
no second plain pass) enters the track's ``TrackEmbedding``, a running weighted mean of its
unification versions that prefers holistic, sharp, tall, confident crops (``crop_weight``). The track
is matched with OAMN's unification (sec. 3.4: both sides masked with the union of their occlusion
regions; similarity offsets per grade pair) against the gallery, which holds one entry per track
seen (live tracks included, so two cameras that see a person at the same time agree):

* no identity yet: the best identity whose score reaches ``new_identity_threshold`` is taken, else a
  new identity is created (the threshold was chosen on held-out training identities: see
  ``docs/occlusion_stages.md``);
* an identity already: it changes only when another identity beats the track's own evidence (the
  best entry of its identity from another track, or the threshold when there is none) by
  ``switch_margin``: a new identity made from poor first crops merges into an existing one;
* entries of the same camera that overlap the track in time are never candidates (one person is
  not two tracks of one camera at once).

Versions cost passes of the network: a holistic crop against holistic entries costs nothing more
(its version 0 is the grade stage's embedding); the other versions are computed only for the grades
present in the gallery, and all nine (what occluded queries need of the track's own entry) for one
crop of each track that lives to its ``full_versions_at``-th run, and once more for a crop twice
as good. A pair that lacks a version is compared through the plain embeddings.

The gallery persists across runs (``gallery``: saved on stop and every ``save_interval_s``), is
bounded (``capacity`` entries, least recently used evicted) and shared by all streams of the graph.
The block added is ``Identities`` for every row of a track that has an identity; the track's final
identity travels on its TrackEnd.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from models.reid.gallery import OcclusionGallery
from models.reid.predictor import ReidPredictor, ReidPredictorConfig
from models.reid.track_embedding import TrackEmbedding, crop_weights, laplacian_sharpness
from models.reid.unification import unification_versions
from pipeline.messages import Identities, PersonCrops, TrackEnd, TrackState
from pipeline.registry import register_stage
from pipeline.stage import StageContext
from stages.person_stage import PersonStage, PersonStageConfig, evidence_schedule
from stages.scheduling import ScheduleConfig
from stages.sinks.common import output_path, under

__all__ = ["IdentifyStage", "IdentifyConfig", "NUM_VERSIONS"]

NUM_VERSIONS = 9


class IdentifyConfig(PersonStageConfig):
    """The gallery, the matching rule, the schedule and batching."""

    schedule: ScheduleConfig = Field(
        default_factory=evidence_schedule, description="When a track is run (every 2 s of stream time)."
    )

    model: ReidPredictorConfig = Field(
        default_factory=ReidPredictorConfig,
        description="OAMN checkpoint (the grade stage's: its embeddings are reused) and backend.",
    )
    gallery: str | None = Field(
        "gallery",
        description="Gallery files (<path>.npz + <path>.json; relative "
        "to output_dir): loaded at start when present, saved on stop and "
        "periodically; null = in memory only.",
    )
    capacity: int = Field(
        5000, ge=1, description="Most gallery entries (one per track); the least recently used is evicted."
    )
    save_interval_s: float = Field(
        60.0,
        gt=0,
        description="Save the gallery at least this often while tracks are being identified (wall clock).",
    )
    new_identity_threshold: float = Field(
        0.60,
        ge=-1,
        le=1,
        description="A track whose best match scores below this gets a new identity (unified cosine "
        "less offsets); 0.60 maximised balanced open-set accuracy on held-out training identities "
        "(amodal eval identity).",
    )
    switch_margin: float = Field(
        0.1,
        ge=0,
        le=2,
        description="How much another identity must beat the "
        "track's own evidence before the track changes identity.",
    )
    full_versions_at: int = Field(
        3,
        ge=1,
        description="The identify run of a track whose crop gets all "
        "nine unification versions (the others get only the versions the "
        "gallery's grades need); pairs missing a version compare plain "
        "embeddings.",
    )
    rerank: int = Field(
        5,
        ge=1,
        description="Entries (the most similar by plain cosine) compared with "
        "occlusion unification; the others compare plain.",
    )
    unify: bool = Field(True, description="Occlusion unification (OAMN sec. 3.4); false = plain cosine.")
    idle_s: float = Field(
        120.0,
        gt=0,
        description="Forget a live track after this much stream time "
        "without a row (when its TrackEnd never came); its entry stays.",
    )


@dataclass
class _Track:
    """A live track: its aggregate, identity, gallery entry and time span."""

    aggregate: TrackEmbedding
    first_seen: float
    last_seen: float
    identity: int | None = None
    score: float = 0.0
    entry: str | None = None  # gallery id "<identity>/<n>" of this track's entry
    slot: int = -1  # where that entry was last written (checked: eviction may reuse it)
    full_weight: float = 0.0  # weight of the best crop whose nine versions were computed
    full_runs: int = 0  # crops whose nine versions were computed
    runs: int = 0


@dataclass
class _Entry:
    """What the stage knows about a gallery entry made this run (for the same-camera overlap rule)."""

    stream_id: str
    first_seen: float
    last_seen: float


@register_stage("identify")
class IdentifyStage(PersonStage):
    """Adds ``Identities`` (identity and match score) for the rows of identified tracks."""

    Config: ClassVar[type[BaseModel]] = IdentifyConfig

    def __init__(self, config: IdentifyConfig, context: StageContext) -> None:
        super().__init__(config, context)
        self.config: IdentifyConfig = config
        self.predictor: ReidPredictor | None = None
        self.gallery: OcclusionGallery | None = None
        self._tracks: dict[tuple[str, int], _Track] = {}
        self._entries: dict[str, _Entry] = {}
        self._next_identity = 1
        self._entry_numbers = itertools.count(1)
        self._last_save = time.monotonic()
        self._dirty = False
        self._path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    @classmethod
    def output_files(cls, config: Any, output_dir: Path) -> list[Path]:
        if config.gallery is None:
            return []
        base = under(output_dir, config.gallery).with_suffix("")
        return [base.with_suffix(".npz"), base.with_suffix(".json")]

    def on_start(self) -> None:
        self.predictor = ReidPredictor.from_config(
            self.config.model, key=f"{self.context.name}.model.weights"
        )
        p = self.predictor
        if self.config.gallery is not None:
            self._path = output_path(self.context, self.config.gallery)
        if self._path is not None and self._path.with_suffix(".json").is_file():
            self.gallery = OcclusionGallery.load(self._path, p.encoder)
            if self.gallery.dim != p.embedding_dim:
                raise ValueError(
                    f"{self.context.name}.gallery {self._path}: {self.gallery.dim}-d entries, "
                    f"the model gives {p.embedding_dim}-d embeddings"
                )
            ids = [_identity_of(i) for i in self.gallery.ids]
            self._next_identity = max(ids, default=0) + 1
            numbers = [int(str(i).split("/")[1]) for i in self.gallery.ids]
            self._entry_numbers = itertools.count(max(numbers, default=0) + 1)
            self.context.logger.info(
                "gallery %s: %d entries, %d identities", self._path, len(self.gallery), len(set(ids))
            )
        else:
            self.gallery = OcclusionGallery(
                p.embedding_dim,
                self.config.capacity,
                p.encoder,
                p.thresholds,
                unify=self.config.unify,
                offsets=p.offsets,
            )

    def on_stop(self) -> list[Any]:
        self._save()
        return []

    def end_tracks(self, end: TrackEnd) -> list[Any]:
        rows, identity, score = [], [], []
        for i, track_id in enumerate(end.track_id.tolist()):
            track = self._tracks.pop((end.stream_id, int(track_id)), None)
            if track is not None and track.entry in self._entries:
                self._entries[track.entry].last_seen = track.last_seen  # its span is final now
            if track is not None and track.identity is not None:
                rows.append(i)
                identity.append(track.identity)
                score.append(track.score)
        self._maybe_save()
        if not rows:
            return []
        return [
            replace(
                end,
                identities=Identities(
                    np.asarray(rows, np.int32), np.asarray(identity, np.int64), np.asarray(score, np.float32)
                ),
            )
        ]

    def end_stream(self, stream_id: str) -> list[Any]:
        for key in [k for k in self._tracks if k[0] == stream_id]:
            del self._tracks[key]
        self._save()
        return []

    # -- per batch ---------------------------------------------------------------------------------
    def run_batch(self, messages: list[PersonCrops]) -> list[Any]:
        scheduled = []
        for message in messages:
            self._observe(message)
            grades = message.grades
            # every message goes through the schedule (it counts the frames a track was seen in);
            # only graded rows can run: their embedding is the grade stage's
            candidates = grades.rows if grades is not None else np.zeros(0, np.int32)
            rows = self.scheduler.select(message, candidates, grades.grade if grades is not None else None)
            if len(rows):
                scheduled.append((message, rows))
        if scheduled:
            self._identify(scheduled)
        self._maybe_save()
        return [self._annotate(message) for message in messages]

    def _identify(self, scheduled: list[tuple[PersonCrops, np.ndarray]]) -> None:
        """The scheduled rows of a batch of messages: their versions in one go, then one decision per
        row in message order (a track decided earlier in the batch is a candidate for the later ones)."""
        assert self.predictor is not None and self.gallery is not None
        own, plain, crops, weights, tracks = [], [], [], [], []
        for message, rows in scheduled:
            grades = message.grades
            assert grades is not None
            at = {int(r): i for i, r in enumerate(grades.rows.tolist())}
            pick = np.array([at[int(r)] for r in rows.tolist()])
            own.append(grades.grade[pick].astype(np.int64))
            plain.append(grades.embedding[pick])
            crops.append(message.crops[rows])
            boxes = message.tracks.xyxy[rows]
            weights.append(
                crop_weights(
                    own[-1],
                    np.array([laplacian_sharpness(c) for c in crops[-1]]),
                    boxes[:, 3] - boxes[:, 1],
                    message.tracks.confidence[rows],
                )
            )
            for row in rows.tolist():
                key = (message.stream_id, int(message.tracks.track_id[row]))
                tracks.append((key, self._tracks[key]))
        own_all, plain_all = np.concatenate(own), np.concatenate(plain)
        weight_all = np.concatenate(weights)
        needed = self._needed_versions(plain_all)
        wanted = [
            range(NUM_VERSIONS) if self._wants_all(t, float(weight_all[i])) else needed[i]
            for i, (_, t) in enumerate(tracks)
        ]
        versions = self._versions(np.concatenate(crops), own_all, plain_all, wanted)
        for i, (key, track) in enumerate(tracks):
            weight = float(weight_all[i])
            track.runs += 1
            if len(wanted[i]) == NUM_VERSIONS:
                track.full_weight = max(track.full_weight, weight)
                track.full_runs += 1
            track.aggregate.add(versions[i], int(own_all[i]), max(weight, 1e-3))
            self._decide(key[0], key, track)

    def _needed_versions(self, plain: np.ndarray) -> list[list[int]]:
        """Per crop, the versions its unified comparison with its ``rerank`` most similar entries (by
        plain cosine) needs: those entries' grades, and 0. Entries further away compare plain, so a
        crop costs a pass only when an occluded entry is a real candidate."""
        assert self.gallery is not None
        if not len(self.gallery):
            return [[0] for _ in range(len(plain))]
        sims, _, grades = self.gallery.plain_similarity(plain)
        k = min(self.config.rerank, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        return [sorted(set(grades[row].tolist()) | {0}) for row in top]

    def _counting_encoder(self, kind: str) -> Any:
        """The network, counting the masked crops it encodes (``version_passes{versions=kind}``: the
        cost of unification)."""
        assert self.predictor is not None
        encode = self.predictor.encoder

        def counted(images: Any) -> tuple[np.ndarray, np.ndarray]:
            self.context.count("version_passes", float(len(images)), versions=kind)
            return encode(images)

        return counted

    def _wants_all(self, track: _Track, weight: float) -> bool:
        """All nine versions (what occluded queries need of this track's entry) for the crop of the
        track's ``full_versions_at``-th run, and once more for a crop twice as good: a short track
        costs no pass, a long one a handful."""
        if track.full_runs == 0:
            return track.runs + 1 >= self.config.full_versions_at
        return track.full_runs < 2 and weight > 2.0 * track.full_weight

    def _versions(self, crops: np.ndarray, own: np.ndarray, plain: np.ndarray, wanted: list) -> np.ndarray:
        """(N, 9, D) unification versions, only the wanted rows computed (grouped by request)."""
        assert self.predictor is not None
        out = np.zeros((len(crops), NUM_VERSIONS, plain.shape[1]), np.float32)
        if not self.config.unify:
            out[:, 0] = plain
            return out
        x = self.predictor.prepare(crops)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, w in enumerate(wanted):
            groups.setdefault(tuple(w), []).append(i)
        for versions, idx in groups.items():
            encode = self._counting_encoder("all" if len(versions) == NUM_VERSIONS else "needed")
            out[idx] = self.timed(
                lambda xs, v=versions, ix=idx, e=encode: unification_versions(e, xs, own[ix], plain[ix], v),
                x[idx],
            )
        return out

    def _decide(self, stream_id: str, key: tuple[str, int], track: _Track) -> None:
        assert self.gallery is not None
        query, grade = track.aggregate.as_query()
        best: dict[int, tuple[float, int]] = {}  # identity -> (score, slot)
        # people the same camera shows at the same time are not this person: the identities its other
        # live tracks hold, and entries of its tracks that overlapped this one in time
        taken = {t.identity for k, t in self._tracks.items() if k[0] == stream_id and k != key}
        if len(self.gallery):
            sims, _, slots = self.gallery.similarity(query, [grade], plain_fallback=True)
            for score, slot in zip(sims[0].tolist(), slots.tolist(), strict=True):
                entry = self.gallery.id_at(slot)
                if entry is None or entry == track.entry or self._overlaps(entry, stream_id, track):
                    continue
                identity = _identity_of(entry)
                if identity in taken:
                    continue
                if identity not in best or score > best[identity][0]:
                    best[identity] = (score, slot)
        threshold = self.config.new_identity_threshold
        top = max(best.items(), key=lambda kv: kv[1][0]) if best else None
        if track.identity is None:
            if top is not None and top[1][0] >= threshold:
                track.identity, track.score = top[0], top[1][0]
                self.gallery.touch(top[1][1])
                self.context.count("identities_matched")
            else:
                track.identity, track.score = self._next_identity, 1.0
                self._next_identity += 1
                self.context.count("identities_created")
        elif top is not None and top[0] != track.identity:
            # the track's own evidence: its identity's best entry from another track; an identity
            # nobody else supports (made from this track's first crops) yields at the threshold
            own = best.get(track.identity, (None, -1))[0]
            needed = threshold if own is None else max(threshold, own) + self.config.switch_margin
            if top[1][0] >= needed:
                self.context.logger.info(
                    "track %s: identity %d -> %d (%.3f vs %s)", key, track.identity, top[0], top[1][0], own
                )
                track.identity, track.score = top[0], top[1][0]
                if track.entry is not None:  # its entry under the old identity would pull it back
                    self.gallery.remove(track.entry)
                    self._entries.pop(track.entry, None)
                track.entry = None  # a new entry under the new identity
                self.context.count("identities_switched")
            elif own is not None:
                track.score = own
        elif top is not None:
            track.score = top[1][0]
        self._store(stream_id, track, query[0], grade)

    def _store(self, stream_id: str, track: _Track, versions: np.ndarray, grade: int) -> None:
        """Write the track's aggregate into its own gallery entry (a new slot the first time)."""
        assert self.gallery is not None and track.identity is not None
        if track.entry is not None and track.slot >= 0 and self.gallery.id_at(track.slot) == track.entry:
            self.gallery.put(track.slot, track.entry, versions, grade)
        else:
            track.entry = f"{track.identity}/{next(self._entry_numbers)}"
            (track.slot,) = self.gallery.add([track.entry], versions[None], grades=[grade])
        self._entries[track.entry] = _Entry(stream_id, track.first_seen, track.last_seen)
        if len(self._entries) > 2 * self.gallery.capacity:  # forget metadata of evicted entries
            live = set(self.gallery.ids)
            self._entries = {k: v for k, v in self._entries.items() if k in live}
        self._dirty = True

    def _overlaps(self, entry: str, stream_id: str, track: _Track) -> bool:
        """An entry of the same camera whose time span overlaps the track's: not the same person."""
        meta = self._entries.get(entry)
        return meta is not None and meta.stream_id == stream_id and meta.last_seen >= track.first_seen

    def _annotate(self, message: PersonCrops) -> PersonCrops:
        rows, identity, score = [], [], []
        for row, track_id in enumerate(message.tracks.track_id.tolist()):
            track = self._tracks.get((message.stream_id, int(track_id)))
            if track is not None and track.identity is not None:
                rows.append(row)
                identity.append(track.identity)
                score.append(track.score)
        if not rows:
            return message
        return replace(
            message,
            identities=Identities(
                np.asarray(rows, np.int32), np.asarray(identity, np.int64), np.asarray(score, np.float32)
            ),
        )

    def _observe(self, message: PersonCrops) -> None:
        """Record when each track of the message was seen (its span in time decides which entries
        overlap it); forget tracks idle for ``idle_s`` (their entries stay)."""
        assert self.predictor is not None
        now = message.pts if message.pts is not None else message.capture_time
        present = message.tracks.state != TrackState.ENDED
        for track_id in message.tracks.track_id[present].tolist():
            key = (message.stream_id, int(track_id))
            track = self._tracks.get(key)
            if track is None:
                self._tracks[key] = _Track(TrackEmbedding(self.predictor.embedding_dim), now, now)
            else:
                track.last_seen = max(track.last_seen, now)
        stale = [
            k
            for k, t in self._tracks.items()
            if k[0] == message.stream_id and now - t.last_seen > self.config.idle_s
        ]
        for key in stale:
            track = self._tracks.pop(key)
            if track.entry in self._entries:
                self._entries[track.entry].last_seen = track.last_seen

    def _maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self.config.save_interval_s:
            self._save()

    def _save(self) -> None:
        if self._path is None or self.gallery is None or not self._dirty:
            return
        self.gallery.save(self._path)
        self._dirty = False
        self._last_save = time.monotonic()
        self.context.count("gallery_saves")


def _identity_of(entry: Any) -> int:
    return int(str(entry).split("/")[0])
