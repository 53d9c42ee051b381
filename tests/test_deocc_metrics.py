"""SSIM / PSNR against known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.deocclusion.image_metrics import batch_ssim_psnr, psnr, ssim


def test_psnr_known_values():
    a = np.full((32, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)  # MSE = 100 -> 10 log10(255^2 / 100)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-9)
    assert psnr(a, a) == math.inf
    c = np.zeros((32, 16, 3), np.uint8)
    d = np.full((32, 16, 3), 255, np.uint8)
    assert psnr(c, d) == pytest.approx(0.0, abs=1e-12)


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)
    # Constant images: variance terms vanish, SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    a, b = np.full((32, 32), 100, np.uint8), np.full((32, 32), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    # Inverting a textured image destroys structure: SSIM far below 1 (negative correlation).
    assert ssim(img, 255 - img) < 0.1
    noisy = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    assert 0.2 < ssim(img, noisy) < 0.99


def test_batch_and_errors():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 32, 16, 3), dtype=np.uint8)
    s, p = batch_ssim_psnr(x, x.copy())
    assert s.shape == (3,) and np.allclose(s, 1.0) and np.isinf(p).all()
    with pytest.raises(ValueError, match="same shape"):
        ssim(x[0], x[0, :16])
    with pytest.raises(ValueError, match="at least 11x11"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)))
