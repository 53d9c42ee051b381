"""Occlusions that look like the real thing, with exact labels: what the grader learns from.

OAMN's corner patches (sec. 3.1) teach a grader where a band of the crop is covered, but on real
footage people are hidden by *other people* walking in front of them, by static objects and by the
frame border. Each kind here is drawn on a crop whose full-body mask is known (Market-1501's parsing
masks), so the label is exact: the hidden share is the fraction of the full-body (amodal) mask that
the occluder covers (or that the frame border cuts away), and the location is the side of the body
the hidden pixels lie on.

- ``person``: another person's parsed body pasted in front, the front person lower in the frame
  (closer to the camera, so as large or larger), overlapping from below or from a side;
- ``behind``: another person pasted *behind* (smaller, higher in the frame, drawn only where the
  target's body is not): nothing of the target is hidden. Crowded footage is full of people behind
  the one a box is about; a grader that never saw them takes any second person for an occluder;
- ``static``: a pole (vertical band), a low object (car, desk, bench: a block from the bottom) or
  the paper's corner patch stretched over a band, textured with pixels of another crop;
- ``truncate``: the box cut by the frame border (mostly the bottom), as a detector's clipped box
  is: the remaining part resized back to the crop size.

Images are NumPy ``(H, W, 3)`` uint8 arrays, masks ``(H, W)`` bool, all at the training size;
everything is deterministic given a ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .occlusion_augment import LOCATIONS

__all__ = [
    "KINDS",
    "Occluded",
    "hidden_location",
    "grader_target",
    "paste_person",
    "paste_behind",
    "degrade",
    "static_occluder",
    "truncate",
    "synthesize",
]

#: occlusion kinds, in the order ``synthesize``'s mixture weights use
KINDS = ("none", "person", "behind", "static", "truncate")
#: default mixture: a third of the crops whole (alone or with someone behind), so the grader sees
#: what "no occlusion" looks like
DEFAULT_WEIGHTS = (0.2, 0.3, 0.15, 0.2, 0.15)


@dataclass(frozen=True)
class Occluded:
    """An occluded crop and its exact label."""

    image: np.ndarray  # (H, W, 3) uint8
    hidden_share: float  # hidden full-body pixels / all full-body pixels, in [0, 1]
    location: int  # -1 none, else the index in LOCATIONS of the side the hidden pixels lie on
    kind: str
    hidden: np.ndarray  # (H, W) bool: full-body pixels covered, in the input crop's coordinates
    cover: np.ndarray  # (H, W) bool: every pixel the occluder covers (body or background)


def hidden_location(body: np.ndarray, hidden: np.ndarray) -> int:
    """Side of the body the hidden pixels lie on (index in LOCATIONS), -1 when nothing is hidden.

    The hidden pixels' centroid is compared with the body's, each axis in units of the body's
    height or width, and the largest displacement names the side (a front person covering the
    legs is ``bottom``; one covering the left shoulder and arm is ``left``)."""
    if not hidden.any():
        return -1
    ys, xs = np.nonzero(body)
    hy, hx = np.nonzero(hidden)
    height = max(1.0, float(ys.max() - ys.min() + 1))
    width = max(1.0, float(xs.max() - xs.min() + 1))
    dy = (hy.mean() - ys.mean()) / height
    dx = (hx.mean() - xs.mean()) / width
    shifts = {"top": -dy, "bottom": dy, "left": -dx, "right": dx}
    return LOCATIONS.index(max(LOCATIONS, key=lambda loc: shifts[loc]))


def grader_target(location: int, hidden_share: float) -> np.ndarray:
    """The grader's target (5,): eq. 7's s^p = 2 * hidden share at the hidden side (capped at 1,
    the paper's half occlusion), 0 at the other sides, then the visible fraction 1 - hidden share."""
    target = np.zeros(len(LOCATIONS) + 1, dtype=np.float32)
    if location >= 0:
        target[location] = min(1.0, 2.0 * hidden_share)
    target[-1] = 1.0 - hidden_share
    return target


def _share(body: np.ndarray, hidden: np.ndarray) -> float:
    total = int(body.sum())
    return float(hidden.sum()) / total if total else 0.0


def _result(image: np.ndarray, body: np.ndarray, cover: np.ndarray, kind: str) -> Occluded:
    hidden = cover & body
    share = _share(body, hidden)
    return Occluded(image, share, hidden_location(body, hidden) if share > 0 else -1, kind, hidden, cover)


def paste_person(
    target: np.ndarray,
    body: np.ndarray,
    occluder: np.ndarray,
    occluder_body: np.ndarray,
    rng: np.random.Generator,
) -> Occluded:
    """Paste ``occluder``'s parsed body in front of ``target``: from below (a person nearer the
    camera, head in the lower part of the crop) or from a side (walking beside, slightly lower)."""
    h, w = body.shape
    if rng.random() < 0.5:  # from below
        scale = rng.uniform(1.0, 1.5)
        top = int(rng.uniform(0.25, 0.85) * h)
        shift = rng.uniform(-0.6, 0.6) * w
    else:  # from a side
        scale = rng.uniform(0.95, 1.2)
        top = int(rng.uniform(-0.05, 0.2) * h)
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.35, 0.85) * w
    oh, ow = int(round(h * scale)), int(round(w * scale))
    person = cv2.resize(occluder, (ow, oh), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(occluder_body.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST) > 0
    left = int(round((w - ow) / 2 + shift))
    cover = np.zeros((h, w), dtype=bool)
    image = target.copy()
    y0, y1 = max(0, top), min(h, top + oh)
    x0, x1 = max(0, left), min(w, left + ow)
    if y0 < y1 and x0 < x1:
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left]
        cover[y0:y1, x0:x1] = a
        image[y0:y1, x0:x1][a] = person[y0 - top : y1 - top, x0 - left : x1 - left][a]
    return _result(image, body, cover, "person")


def paste_behind(
    target: np.ndarray,
    body: np.ndarray,
    other: np.ndarray,
    other_body: np.ndarray,
    rng: np.random.Generator,
) -> Occluded:
    """Draw ``other``'s parsed body behind ``target``'s person (farther from the camera: smaller,
    its feet higher in the frame) wherever the target's body is not; nothing is hidden."""
    h, w = body.shape
    scale = rng.uniform(0.6, 1.0)
    oh, ow = int(round(h * scale)), int(round(w * scale))
    person = cv2.resize(other, (ow, oh), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.resize(other_body.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST) > 0
    top = int(rng.uniform(-0.15, 0.25) * h)
    left = int(round((w - ow) / 2 + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.8) * w))
    image = target.copy()
    y0, y1 = max(0, top), min(h, top + oh)
    x0, x1 = max(0, left), min(w, left + ow)
    if y0 < y1 and x0 < x1:
        a = alpha[y0 - top : y1 - top, x0 - left : x1 - left] & ~body[y0:y1, x0:x1]
        image[y0:y1, x0:x1][a] = person[y0 - top : y1 - top, x0 - left : x1 - left][a]
    return Occluded(image, 0.0, -1, "behind", np.zeros_like(body), np.zeros_like(body))


def _texture(source: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A patch of ``source`` (any region, a quarter to all of it) resized to ``height x width``."""
    sh, sw = source.shape[:2]
    ph, pw = int(rng.uniform(0.25, 1.0) * sh), int(rng.uniform(0.25, 1.0) * sw)
    y, x = int(rng.integers(sh - ph + 1)), int(rng.integers(sw - pw + 1))
    return cv2.resize(source[y : y + ph, x : x + pw], (width, height), interpolation=cv2.INTER_LINEAR)


def static_occluder(
    target: np.ndarray, body: np.ndarray, source: np.ndarray, rng: np.random.Generator
) -> Occluded:
    """A pole, a low object or OAMN's corner-patch band, textured with pixels of ``source``."""
    h, w = body.shape
    cover = np.zeros((h, w), dtype=bool)
    shape = rng.choice(["pole", "low", "band"], p=[0.3, 0.4, 0.3])
    if shape == "pole":
        width = max(2, int(rng.uniform(0.08, 0.3) * w))
        x = int(rng.integers(-width // 2, w - width // 2))
        cover[:, max(0, x) : max(0, x + width)] = True
    elif shape == "low":
        height = max(2, int(rng.uniform(0.15, 0.6) * h))
        width = int(rng.uniform(0.5, 1.0) * w)
        x = 0 if rng.random() < 0.5 else w - width
        cover[h - height :, x : x + width] = True
    else:  # OAMN sec. 3.1's band, with a continuous area
        side = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        area = rng.uniform(0.15, 0.55)
        if side in ("top", "bottom"):
            band = max(1, int(round(h * area)))
            rows = slice(0, band) if side == "top" else slice(h - band, h)
            cover[rows, :] = True
        else:
            band = max(1, int(round(w * area)))
            cols = slice(0, band) if side == "left" else slice(w - band, w)
            cover[:, cols] = True
    image = target.copy()
    if cover.any():
        ys, xs = np.nonzero(cover)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        image[y0:y1, x0:x1] = _texture(source, int(y1 - y0), int(x1 - x0), rng)
    return _result(image, body, cover, "static")


def truncate(target: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> Occluded:
    """The crop cut by the frame border (bottom most often, as for people entering at the bottom
    of the frame), the part left resized back to the crop size as a clipped detector box is."""
    h, w = body.shape
    side = LOCATIONS[int(rng.choice(4, p=[0.15, 0.6, 0.125, 0.125]))]
    cut = rng.uniform(0.1, 0.6)
    lost = np.zeros((h, w), dtype=bool)
    if side in ("top", "bottom"):
        n = max(1, int(round(h * cut)))
        rows = slice(0, n) if side == "top" else slice(h - n, h)
        lost[rows, :] = True
        kept = target[n:] if side == "top" else target[: h - n]
    else:
        n = max(1, int(round(w * cut)))
        cols = slice(0, n) if side == "left" else slice(w - n, w)
        lost[:, cols] = True
        kept = target[:, n:] if side == "left" else target[:, : w - n]
    image = cv2.resize(np.ascontiguousarray(kept), (w, h), interpolation=cv2.INTER_LINEAR)
    return _result(image, body, lost, "truncate")


def synthesize(
    target: np.ndarray,
    body: np.ndarray,
    other: Callable[[], tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    weights: tuple[float, ...] = DEFAULT_WEIGHTS,
) -> Occluded:
    """One crop of a kind drawn with ``weights`` (over ``KINDS``); ``other()`` returns another
    person's (crop, full-body mask) for the occluder or the texture."""
    if len(weights) != len(KINDS):
        raise ValueError(f"weights must give one probability per kind {KINDS}, got {weights}")
    p = np.asarray(weights, dtype=np.float64)
    kind = KINDS[int(rng.choice(len(KINDS), p=p / p.sum()))]
    if kind == "none":
        return Occluded(target.copy(), 0.0, -1, "none", np.zeros_like(body), np.zeros_like(body))
    if kind == "person":
        crop, mask = other()
        return paste_person(target, body, crop, mask, rng)
    if kind == "behind":
        crop, mask = other()
        return paste_behind(target, body, crop, mask, rng)
    if kind == "static":
        return static_occluder(target, body, other()[0], rng)
    return truncate(target, body, rng)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera variety the training crops lack (labels unchanged): brightness / contrast jitter,
    and at times a lower resolution (down- then up-sampled, as a small far person is) or blur."""
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    out = (out - out.mean()) * rng.uniform(0.75, 1.25) + out.mean() * rng.uniform(0.75, 1.25)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        f = rng.uniform(0.3, 0.8)
        small = cv2.resize(out, (max(4, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    elif rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (5, 5), rng.uniform(0.5, 1.5))
    return out
