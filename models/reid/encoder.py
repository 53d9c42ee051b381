"""Turn person crops into (embedding, grader scores) with one forward pass, from a torch OAMN or
any ``models.backends`` backend running its ONNX export; plus crop preprocessing.

An encoder is any callable ``images (N, 3, H, W) float32 normalised -> (embeddings (N, D),
scores (N, 4))`` returning NumPy arrays; embeddings are L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.backbones import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["Encoder", "TorchEncoder", "BackendEncoder", "prepare_crops"]

Encoder = Callable[[np.ndarray | torch.Tensor], tuple[np.ndarray, np.ndarray]]


def prepare_crops(crops: Sequence[np.ndarray], size_hw: tuple[int, int]) -> np.ndarray:
    """RGB uint8 crops (H_i, W_i, 3) of any size -> float32 (N, 3, H, W) resized (bilinear) and
    normalised with ImageNet mean/std: the network input."""
    if len(crops) == 0:
        return np.zeros((0, 3, *size_hw), dtype=np.float32)
    out = []
    for i, crop in enumerate(crops):
        arr = np.asarray(crop)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"crop {i} must be a non-empty (H, W, 3) RGB array, got shape {arr.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()
        out.append(F.interpolate(t, size=size_hw, mode="bilinear", align_corners=False)[0])
    x = torch.stack(out) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy().astype(np.float32)


class TorchEncoder:
    """Eager torch: runs an ``OAMN`` in eval mode in chunks of ``batch_size``."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 64, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(images, dtype=torch.float32)
        embs, scores = [], []
        for start in range(0, len(x), self.batch_size):
            out = self.model(x[start : start + self.batch_size].to(self.device))
            embs.append(F.normalize(out.embedding, dim=1).cpu())
            scores.append(out.scores.cpu())
        if not embs:
            return np.zeros((0, self.model.embedding_dim), np.float32), np.zeros((0, 4), np.float32)
        return torch.cat(embs).numpy(), torch.cat(scores).numpy()


class BackendEncoder:
    """A ``models.backends`` backend running the exported graph (outputs ``embedding``, ``grade``)."""

    def __init__(
        self,
        backend,
        batch_size: int = 32,
        embedding: str = "embedding",
        grade: str = "grade",
    ):
        self.backend = backend
        self.batch_size = batch_size
        self.names = (embedding, grade)

    def __call__(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        embs, scores = [], []
        for start in range(0, len(x), self.batch_size):
            out = self.backend(x[start : start + self.batch_size])
            embs.append(out[self.names[0]])
            scores.append(out[self.names[1]])
        emb = np.concatenate(embs).astype(np.float32)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb, np.concatenate(scores).astype(np.float32)
