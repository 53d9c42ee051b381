"""The "occlude them all" gallery the pipeline's identify stage matches against (OAMN, Chen et
al., ICCV 2021, sec. 3.4; rule in ``unification.py``).

Each entry keeps 9 L2-normalised embeddings: its crop unmasked and masked with each of the 8
occlusion types (4 locations x 2 areas), computed in one batched pass when the entry is added, plus
its own grade (from the grader, eq. 8). Storage is one preallocated contiguous float32 array
(9, capacity, D), so matching is a single matrix product per query grade.

Capacity is bounded; when full, ``add`` evicts the **least recently used** entry: an entry's clock
is set when it is added and refreshed whenever it is a query's best match. Save/load uses
``<path>.npz`` (arrays, no pickle) and ``<path>.json`` (ids, settings).

    gallery = OcclusionGallery.from_weights("models/weights/oamn_osnet_x0_25_peta.pt", capacity=5000)
    gallery.add(["alice", "bob"], crops)              # crops: (N, 3, H, W) normalised network input
    matches = gallery.match(query_crops, top_k=5)     # grades from the grader unless given
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .encoder import Encoder, TorchEncoder
from .grader import GradeThresholds, decide_grades
from .occlusion_augment import NUM_GRADES, mask_batch
from .unification import unified_similarity

__all__ = ["OcclusionGallery", "Match"]

logger = logging.getLogger(__name__)

Id = str | int


@dataclass(frozen=True)
class Match:
    """A gallery entry returned by ``match``: its id, cosine similarity and grade (0 = holistic)."""

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
        mask_space: str = "feature",
    ):
        if embedding_dim <= 0 or capacity <= 0:
            raise ValueError(f"embedding_dim and capacity must be positive, got {embedding_dim}, {capacity}")
        self.dim, self.capacity = embedding_dim, capacity
        if mask_space not in ("feature", "image"):
            raise ValueError(f"mask_space must be 'feature' or 'image', got {mask_space!r}")
        self.encoder, self.fill, self.unify, self.mask_space = encoder, fill, unify, mask_space
        self.thresholds = thresholds or GradeThresholds()
        self._emb = np.zeros((NUM_GRADES, capacity, embedding_dim), dtype=np.float32)
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
        thresholds (calibrated at training time) unless ``thresholds`` is given."""
        from .oamn import load_oamn

        model, cfg = load_oamn(path, map_location=device)
        kwargs.setdefault("thresholds", GradeThresholds(*cfg.grade_thresholds))
        return cls.for_model(model, capacity, batch_size, device, **kwargs)

    def __len__(self) -> int:
        return int(self._valid.sum())

    @property
    def ids(self) -> list[Id]:
        return [self._ids[i] for i in np.flatnonzero(self._valid)]

    # -- encoding -------------------------------------------------------------------------------
    def encode(
        self, images: np.ndarray | torch.Tensor, grades_needed: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops (N, 3, H, W) -> (N, 9, D) embeddings (unmasked + masked versions, one batched
        pass) and grades (N,) from the unmasked pass's grader scores.

        ``mask_space='feature'`` (default): each grade's band of the masked feature g is zeroed,
        one E^I pass and up to nine E^II passes per crop (``OAMN.masked_embeddings``); on held-out
        PETA identities this unified better than painting pixels (see README_reid.md).
        ``mask_space='image'``: the band of the crop is painted with ``fill`` and re-encoded.
        ``grades_needed`` limits the masked versions computed (the others stay zero), so a query
        against a holistic gallery costs one pass (an exported graph computes all nine anyway).
        """
        if self.encoder is None:
            raise ValueError(
                "this gallery has no encoder; pass (N, 9, D) embeddings and grades instead of crops"
            )
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"crops must be (N, 3, H, W) normalised float arrays, got shape {tuple(x.shape)}"
            )
        n = x.shape[0]
        if self.mask_space == "feature":
            if not hasattr(self.encoder, "encode_all_grades"):
                raise ValueError(
                    f"{type(self.encoder).__name__} cannot mask in feature space; "
                    "use an OAMN encoder (TorchEncoder, BackendEncoder) or mask_space='image'"
                )
            emb, scores = self.encoder.encode_all_grades(x.numpy(), grades_needed)
            if emb.shape[2] != self.dim:
                raise ValueError(f"encoder gives {emb.shape[2]}-d embeddings, gallery holds {self.dim}-d")
            return emb.astype(np.float32), decide_grades(scores, self.thresholds)
        wanted = sorted({0, *(range(NUM_GRADES) if grades_needed is None else map(int, grades_needed))})
        masks = torch.tensor(wanted).repeat_interleave(n)
        flat, scores = self.encoder(mask_batch(x.repeat(len(wanted), 1, 1, 1), masks, self.fill))
        if flat.shape[1] != self.dim:
            raise ValueError(f"encoder gives {flat.shape[1]}-d embeddings, gallery holds {self.dim}-d")
        emb = np.zeros((n, NUM_GRADES, self.dim), dtype=np.float32)
        emb[:, wanted] = flat.reshape(len(wanted), n, self.dim).transpose(1, 0, 2)
        return emb, decide_grades(scores[:n], self.thresholds)

    def _as_embeddings(
        self, data, grades, what: str, grades_needed: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        arr = np.asarray(data)
        if arr.ndim == 3 and arr.shape[1:] == (NUM_GRADES, self.dim):
            if grades is None:
                raise ValueError(f"{what}: grades are required when passing embeddings")
            emb = arr.astype(np.float32)
            emb = emb / np.maximum(np.linalg.norm(emb, axis=2, keepdims=True), 1e-12)
            g = np.asarray(grades, dtype=np.int64).reshape(-1)
        elif arr.ndim == 4:
            emb, predicted = self.encode(arr, grades_needed)
            g = predicted if grades is None else np.asarray(grades, dtype=np.int64).reshape(-1)
        else:
            raise ValueError(
                f"{what}: expected crops (N, 3, H, W) or embeddings (N, {NUM_GRADES}, {self.dim}), "
                f"got shape {arr.shape}"
            )
        if len(g) != len(emb):
            raise ValueError(f"{what}: {len(g)} grades for {len(emb)} items")
        if len(g) and (g.min() < 0 or g.max() >= NUM_GRADES):
            raise ValueError(f"{what}: grades must be in [0, {NUM_GRADES - 1}]")
        return emb, g

    # -- gallery maintenance --------------------------------------------------------------------
    def add(self, ids: Sequence[Id], crops_or_embeddings, grades: Sequence[int] | None = None) -> list[int]:
        """Add one entry per id (the same id may have several entries); returns their slots.
        Evicts least-recently-used entries when the gallery is full."""
        ids = list(ids)
        emb, g = self._as_embeddings(crops_or_embeddings, grades, "add")
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
            self._grades[slot] = g[i]
            self._ids[slot] = ident
            self._valid[slot] = True
            self._last_used[slot] = self._clock
            slots.append(slot)
        return slots

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
        self, query, grade: Sequence[int] | int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities (Q, N_valid), query grades (Q,), valid slots (N_valid,))."""
        if grade is not None and np.ndim(grade) == 0:
            grade = [int(grade)]
        slots = np.flatnonzero(self._valid)
        needed = np.unique(self._grades[slots]) if self.unify else [0]
        q_emb, q_grades = self._as_embeddings(query, grade, "match", needed)
        hi = int(slots[-1]) + 1 if len(slots) else 0
        # free slots are refilled lowest first, so the used prefix [:hi] is a view, never a copy
        if self.unify:
            sims = unified_similarity(
                np.ascontiguousarray(q_emb.transpose(1, 0, 2)), q_grades, self._emb[:, :hi], self._grades[:hi]
            )
        else:
            sims = q_emb[:, 0] @ self._emb[0, :hi].T
        return sims[:, slots], q_grades, slots

    def match(
        self, query, grade: Sequence[int] | int | None = None, top_k: int = 5, unique_ids: bool = True
    ) -> list[list[Match]]:
        """Best ``top_k`` gallery entries per query (highest cosine similarity first).

        ``query``: crops (Q, 3, H, W) or embeddings (Q, 9, D); ``grade``: the queries' grades
        (0..8), computed by the grader from the crops when None. ``unique_ids`` keeps only the best
        entry of each id.
        """
        if top_k <= 0:
            raise ValueError(f"top_k must be positive, got {top_k}")
        sims, _, slots = self.similarity(query, grade)
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
        base = Path(path).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        slots = np.flatnonzero(self._valid)
        npz, meta = base.with_suffix(".npz"), base.with_suffix(".json")
        np.savez(
            npz, embeddings=self._emb[:, slots], grades=self._grades[slots], last_used=self._last_used[slots]
        )
        ids = [self._ids[s] for s in slots]
        for ident in ids:
            if not isinstance(ident, str | int):
                raise ValueError(f"only str/int ids can be saved, got {type(ident).__name__}")
        meta.write_text(
            json.dumps(
                {
                    "format": "amodal.oamn_gallery/1",
                    "embedding_dim": self.dim,
                    "capacity": self.capacity,
                    "ids": ids,
                    "clock": self._clock,
                    "thresholds": [self.thresholds.quarter, self.thresholds.half],
                    "fill": self.fill,
                    "unify": self.unify,
                    "mask_space": self.mask_space,
                },
                indent=1,
            )
        )
        return npz, meta

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None) -> OcclusionGallery:
        """Inverse of ``save`` (attach an encoder to match crops again)."""
        base = Path(path).with_suffix("")
        meta_path, npz_path = base.with_suffix(".json"), base.with_suffix(".npz")
        if not meta_path.is_file() or not npz_path.is_file():
            raise FileNotFoundError(f"gallery files not found: {meta_path} / {npz_path}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "amodal.oamn_gallery/1":
            raise ValueError(f"{meta_path}: not an OAMN gallery file")
        gal = cls(
            meta["embedding_dim"],
            meta["capacity"],
            encoder,
            GradeThresholds(*meta["thresholds"]),
            meta["fill"],
            meta["unify"],
            meta.get("mask_space", "image"),  # galleries saved before feature masking
        )
        with np.load(npz_path, allow_pickle=False) as data:
            n = len(meta["ids"])
            gal._emb[:, :n] = data["embeddings"]
            gal._grades[:n] = data["grades"]
            gal._last_used[:n] = data["last_used"]
        gal._valid[:n] = True
        gal._ids[:n] = meta["ids"]
        gal._clock = meta["clock"]
        return gal
