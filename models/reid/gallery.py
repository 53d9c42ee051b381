"""The "occlude them all" gallery the pipeline's identify stage matches against (OAMN, Chen et
al., ICCV 2021, sec. 3.4; rule in ``unification.py``).

Each entry keeps its grade (from the grader, eq. 8) and 9 L2-normalised embeddings, its versions:
the crop with each occlusion type's region (4 locations x 2 areas) and its own region masked out
(version 0: its own region only), encoded when the entry is added: one batched plain pass that
grades it, then one batched call for its masked versions. Storage is one preallocated contiguous
float32 array (9, capacity, D), so matching is a single matrix product per query grade. The
similarities are made comparable across grades with the checkpoint's offsets
(``unification.similarity_offsets``), and crops can be graded with a camera's own thresholds
(``grader.adapt_thresholds``; ``add`` / ``match`` take ``thresholds=``).

Capacity is bounded; when full, ``add`` evicts the **least recently used** entry: an entry's clock
is set when it is added and refreshed whenever it is a query's best match. Crops become entries
through ``gallery_encoding``; save/load uses ``<path>.npz`` (arrays, no pickle) and ``<path>.json``
(ids, settings), the format in ``gallery_store``.

    gallery = OcclusionGallery.from_weights("models/weights/oamn_osnet_x0_25_peta.pt", capacity=5000)
    gallery.add(["alice", "bob"], crops)              # crops: (N, 3, H, W) normalised network input
    matches = gallery.match(query_crops, top_k=5)     # grades from the grader unless given
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .encoder import Encoder, TorchEncoder
from .gallery_encoding import as_embeddings, check_grades, encode_crops
from .gallery_store import GalleryRecord, load_gallery, save_gallery
from .grader import GradeThresholds
from .occlusion_augment import NUM_GRADES
from .unification import unified_similarity

__all__ = ["OcclusionGallery", "Match"]

logger = logging.getLogger(__name__)

Id = str | int


@dataclass(frozen=True)
class Match:
    """A gallery entry returned by ``match``: its id, similarity (cosine, less the gallery's offset for
    the two grades when it has offsets) and grade (0 = holistic)."""

    id: Id
    score: float
    grade: int


class OcclusionGallery:
    """Bounded gallery with occlusion unification. ``encoder`` turns crops into (embedding, scores);
    without one, entries and queries must be given as (N, 9, D) embeddings with their grades."""

    def __init__(
        self,
        embedding_dim: int,
        capacity: int = 10000,
        encoder: Encoder | None = None,
        thresholds: GradeThresholds | None = None,
        fill: float = 0.0,
        unify: bool = True,
        offsets: np.ndarray | None = None,
    ):
        if embedding_dim <= 0 or capacity <= 0:
            raise ValueError(f"embedding_dim and capacity must be positive, got {embedding_dim}, {capacity}")
        if offsets is not None and np.shape(offsets) != (NUM_GRADES, NUM_GRADES):
            raise ValueError(f"offsets must be ({NUM_GRADES}, {NUM_GRADES}), got {np.shape(offsets)}")
        self.dim, self.capacity = embedding_dim, capacity
        self.encoder, self.fill, self.unify = encoder, fill, unify
        self.thresholds = thresholds or GradeThresholds()
        #: subtracted from unified similarities (``unification.similarity_offsets``); None = raw
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=np.float32)
        self._emb = np.zeros((NUM_GRADES, capacity, embedding_dim), dtype=np.float32)
        #: which versions of each entry were computed (non-zero rows), kept with ``_emb``
        self._has = np.zeros((NUM_GRADES, capacity), dtype=bool)
        self._grades = np.zeros(capacity, dtype=np.int64)
        self._last_used = np.zeros(capacity, dtype=np.int64)
        self._valid = np.zeros(capacity, dtype=bool)
        self._ids: list[Id | None] = [None] * capacity
        self._clock = 0
        self.evictions = 0

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        capacity: int = 10000,
        batch_size: int = 64,
        device: str = "cpu",
        **kwargs,
    ) -> OcclusionGallery:
        """A gallery whose encoder is an ``OAMN`` run eagerly (``models.reid.oamn``)."""
        return cls(model.embedding_dim, capacity, TorchEncoder(model, batch_size, device), **kwargs)

    @classmethod
    def from_weights(
        cls, path: str | Path, capacity: int = 10000, batch_size: int = 64, device: str = "cpu", **kwargs
    ) -> OcclusionGallery:
        """A gallery for an OAMN checkpoint (``load_oamn``), grading with the checkpoint's eq. 8
        thresholds and matching with its similarity offsets (both calibrated at training time)
        unless ``thresholds`` / ``offsets`` are given."""
        from .oamn import load_oamn

        model, cfg = load_oamn(path, map_location=device)
        kwargs.setdefault("thresholds", cfg.thresholds())
        if cfg.similarity_offsets is not None:
            kwargs.setdefault("offsets", np.asarray(cfg.similarity_offsets, dtype=np.float32))
        return cls.for_model(model, capacity, batch_size, device, **kwargs)

    def __len__(self) -> int:
        return int(self._valid.sum())

    @property
    def ids(self) -> list[Id]:
        return [self._ids[i] for i in np.flatnonzero(self._valid)]

    # -- encoding -------------------------------------------------------------------------------
    def encode(
        self,
        images: np.ndarray | torch.Tensor,
        grades: Sequence[int] | None = None,
        versions: Sequence[int] | None = None,
        thresholds: GradeThresholds | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops (N, 3, H, W) -> (N, 9, D) embeddings and grades (N,): one plain pass gives the
        grader's grades (or ``grades`` when given), then each crop's unification versions
        (``unification.unification_versions``: version k masks grade k's region and the crop's own,
        painted with ``fill``). ``versions`` limits the versions computed (the others stay zero),
        so a holistic query against a holistic gallery costs one pass. Without unification only
        the plain embedding (row 0) is kept. ``thresholds`` replaces the gallery's for this call
        (a camera's own, ``grader.adapt_thresholds``)."""
        return encode_crops(
            self.encoder,
            images,
            self.dim,
            thresholds or self.thresholds,
            self.unify,
            self.fill,
            grades,
            versions,
        )

    def _as_embeddings(
        self, data, grades, what: str, versions: Sequence[int] | None = None, thresholds=None
    ) -> tuple[np.ndarray, np.ndarray]:
        return as_embeddings(data, grades, what, self.dim, self.encode, versions, thresholds)

    # -- gallery maintenance --------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[Id],
        crops_or_embeddings,
        grades: Sequence[int] | None = None,
        thresholds: GradeThresholds | None = None,
    ) -> list[int]:
        """Add one entry per id (the same id may have several entries); returns their slots.
        Evicts least-recently-used entries when the gallery is full. ``thresholds``: the camera's
        own grade thresholds for crops graded here (default: the gallery's)."""
        ids = list(ids)
        emb, g = self._as_embeddings(crops_or_embeddings, grades, "add", thresholds=thresholds)
        if len(ids) != len(emb):
            raise ValueError(f"add: {len(ids)} ids for {len(emb)} items")
        slots = []
        for i, ident in enumerate(ids):
            free = np.flatnonzero(~self._valid)
            if len(free):
                slot = int(free[0])
            else:
                slot = int(np.argmin(self._last_used))
                logger.debug(
                    "gallery full: evicting %r (last used %d)", self._ids[slot], self._last_used[slot]
                )
                self.evictions += 1
            self._clock += 1
            self._emb[:, slot] = emb[i]
            self._has[:, slot] = np.any(emb[i] != 0, axis=1)
            self._grades[slot] = g[i]
            self._ids[slot] = ident
            self._valid[slot] = True
            self._last_used[slot] = self._clock
            slots.append(slot)
        return slots

    def plain_similarity(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosine of plain embeddings (N, D) against every entry's version 0: (similarities
        (N, N_valid), valid slots, their grades). Cheap (one product); used to choose which entries
        are worth unified versions."""
        slots = np.flatnonzero(self._valid)
        emb = np.asarray(embeddings, dtype=np.float32)
        return emb @ self._emb[0, slots].T, slots, self._grades[slots].copy()

    def grades_present(self) -> set[int]:
        """The grades of the entries held (the query versions a match can ask for)."""
        return set(np.unique(self._grades[self._valid]).tolist())

    def id_at(self, slot: int) -> Id | None:
        """The id held by ``slot`` (None when the slot is free)."""
        return self._ids[slot] if self._valid[slot] else None

    def put(self, slot: int, ident: Id, embeddings: np.ndarray, grade: int) -> None:
        """Overwrite ``slot`` with one entry's (9, D) versions and grade, and mark it used now: how a
        live track's entry follows its aggregate without a new slot per update."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.shape != (NUM_GRADES, self.dim):
            raise ValueError(f"put: expected ({NUM_GRADES}, {self.dim}) embeddings, got {emb.shape}")
        check_grades(np.array([grade]), "put")
        norms = np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self._clock += 1
        self._emb[:, slot] = emb / norms
        self._has[:, slot] = np.any(emb != 0, axis=1)
        self._grades[slot] = int(grade)
        self._ids[slot] = ident
        self._valid[slot] = True
        self._last_used[slot] = self._clock

    def touch(self, slot: int) -> None:
        """Mark ``slot`` used now (least-recently-used eviction spares it longest)."""
        self._clock += 1
        self._last_used[slot] = self._clock

    def remove(self, ident: Id) -> int:
        """Remove every entry of ``ident``; returns how many."""
        slots = [i for i in np.flatnonzero(self._valid) if self._ids[i] == ident]
        for s in slots:
            self._valid[s] = False
            self._ids[s] = None
            self._last_used[s] = 0
        return len(slots)

    # -- matching -------------------------------------------------------------------------------
    def similarity(
        self,
        query,
        grade: Sequence[int] | int | None = None,
        thresholds: GradeThresholds | None = None,
        plain_fallback: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities (Q, N_valid), query grades (Q,), valid slots (N_valid,)); ``plain_fallback``:
        see ``unification.unified_similarity``."""
        if grade is not None and np.ndim(grade) == 0:
            grade = np.full(len(query), int(grade))  # one grade for every query
        slots = np.flatnonzero(self._valid)
        needed = np.unique(self._grades[slots]) if self.unify else [0]
        q_emb, q_grades = self._as_embeddings(query, grade, "match", needed, thresholds)
        hi = int(slots[-1]) + 1 if len(slots) else 0
        # free slots are refilled lowest first, so the used prefix [:hi] is a view, never a copy
        if self.unify:
            sims = unified_similarity(
                np.ascontiguousarray(q_emb.transpose(1, 0, 2)),
                q_grades,
                self._emb[:, :hi],
                self._grades[:hi],
                self.offsets,
                plain_fallback,
                self._has[:, :hi] if plain_fallback else None,
            )
        else:
            sims = q_emb[:, 0] @ self._emb[0, :hi].T
        return sims[:, slots], q_grades, slots

    def match(
        self,
        query,
        grade: Sequence[int] | int | None = None,
        top_k: int = 5,
        unique_ids: bool = True,
        thresholds: GradeThresholds | None = None,
    ) -> list[list[Match]]:
        """Best ``top_k`` gallery entries per query (highest cosine similarity first).

        ``query``: crops (Q, 3, H, W) or embeddings (Q, 9, D); ``grade``: the queries' grades
        (0..8; one int for all), computed by the grader from the crops when None. ``unique_ids``
        keeps only the best entry of each id; ``thresholds``: the camera's own grade thresholds.
        Scores are cosine similarities less the gallery's offsets, when it has them.
        """
        if top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        sims, _, slots = self.similarity(query, grade, thresholds)
        results: list[list[Match]] = []
        for row in sims:
            order = np.argsort(-row, kind="stable")
            found: list[Match] = []
            seen: set = set()
            for j in order:
                ident = self._ids[slots[j]]
                if unique_ids and ident in seen:
                    continue
                seen.add(ident)
                found.append(Match(ident, float(row[j]), int(self._grades[slots[j]])))
                if len(found) == top_k:
                    break
            if len(order):
                self._clock += 1
                self._last_used[slots[order[0]]] = self._clock
            results.append(found)
        return results

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.npz`` (embeddings, grades, clocks) and ``<path>.json`` (ids, settings)."""
        slots = np.flatnonzero(self._valid)
        record = GalleryRecord(
            embedding_dim=self.dim,
            capacity=self.capacity,
            ids=[self._ids[s] for s in slots],
            clock=self._clock,
            thresholds=self.thresholds,
            fill=self.fill,
            unify=self.unify,
            offsets=self.offsets,
            embeddings=self._emb[:, slots],
            grades=self._grades[slots],
            last_used=self._last_used[slots],
        )
        return save_gallery(record, path)

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None) -> OcclusionGallery:
        """Inverse of ``save`` (attach an encoder to match crops again)."""
        record = load_gallery(path)
        gal = cls(
            record.embedding_dim,
            record.capacity,
            encoder,
            record.thresholds,
            record.fill,
            record.unify,
            record.offsets,
        )
        n = len(record.ids)
        gal._emb[:, :n] = record.embeddings
        gal._has[:, :n] = np.any(gal._emb[:, :n] != 0, axis=2)
        gal._grades[:n] = record.grades
        gal._last_used[:n] = record.last_used
        gal._valid[:n] = True
        gal._ids[:n] = record.ids
        gal._clock = record.clock
        return gal
