"""SSIM and PSNR between uint8 RGB crops (de-occlusion paper, sec. 5.1).

SSIM follows Wang et al. (2004): 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data
range 255, computed per channel on the valid (unpadded) region and averaged over channels. PSNR is
10 log10(255^2 / MSE) over all pixels and channels (inf for identical images).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ssim", "ssim_map", "psnr", "region_ssim_psnr", "batch_ssim_psnr", "mask_iou"]

_K1, _K2, _L = 0.01, 0.03, 255.0


def _check(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    if min(a.shape[:2]) < 11:
        raise ValueError(f"images must be at least 11x11 for the SSIM window, got {a.shape[:2]}")
    return a.astype(np.float64), b.astype(np.float64)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel structural similarity, averaged over channels, on the valid region: an
    (H - 10, W - 10) map whose pixel (i, j) is the window centred on (i + 5, j + 5)."""
    x, y = _check(a, b)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = kernel @ kernel.T

    def filt(img: np.ndarray) -> np.ndarray:
        return cv2.filter2D(img, -1, window, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]

    maps = []
    for ch in range(x.shape[2]):
        xc, yc = x[..., ch], y[..., ch]
        mu_x, mu_y = filt(xc), filt(yc)
        sxx = filt(xc * xc) - mu_x**2
        syy = filt(yc * yc) - mu_y**2
        sxy = filt(xc * yc) - mu_x * mu_y
        num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
        maps.append(num / den)
    return np.mean(maps, axis=0)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two images with values in [0, 255]."""
    return float(np.mean(ssim_map(a, b)))


def region_ssim_psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> tuple[float, float]:
    """SSIM averaged over the windows centred in ``region`` (H, W) bool and PSNR over its pixels;
    NaN for an empty region (inf PSNR where the region is identical)."""
    if region.shape != a.shape[:2]:
        raise ValueError(f"region must be {a.shape[:2]}, got {region.shape}")
    inner = region[5:-5, 5:-5]
    s = float(ssim_map(a, b)[inner].mean()) if inner.any() else float("nan")
    if not region.any():
        return s, float("nan")
    mse = float(np.mean((a[region].astype(np.float64) - b[region].astype(np.float64)) ** 2))
    return s, float("inf") if mse == 0 else 10.0 * float(np.log10(_L**2 / mse))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for images with values in [0, 255]."""
    x, y = _check(a, b)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(_L**2 / mse))


def batch_ssim_psnr(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image SSIM and PSNR for (N, H, W, 3) uint8 batches."""
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"expected two (N, H, W, C) batches of equal shape, got {pred.shape} and {target.shape}"
        )
    s = np.array([ssim(p, t) for p, t in zip(pred, target, strict=True)])
    p = np.array([psnr(p_, t) for p_, t in zip(pred, target, strict=True)])
    return s, p


def mask_iou(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-mask intersection over union of (N, H, W) bool masks; 1.0 where both are empty."""
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"expected two (N, H, W) mask batches of equal shape, got {pred.shape} and {target.shape}"
        )
    inter = (pred & target).reshape(len(pred), -1).sum(1)
    union = (pred | target).reshape(len(pred), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
