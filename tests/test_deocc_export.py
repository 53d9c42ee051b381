"""The generator through the backend layer: ONNX export parity (<= 1e-4 fp32) and backend agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backends import check_onnx_parity, create_backend, export_onnx
from models.deocclusion import UNetGenerator, load_generator, save_generator
from models.deocclusion.recipe import ModelConfig


def _trained_like(g: UNetGenerator) -> UNetGenerator:
    """Non-trivial BN statistics, as after training (fresh BN is the identity and hides export bugs)."""
    g.train()
    with torch.no_grad():
        for _ in range(3):
            g(torch.rand(4, 3, *g.image_size) * 2 - 1)
    return g.eval()


@pytest.mark.parametrize(
    ("upsample", "residual"), [("transpose", False), ("bilinear", False), ("transpose", True)]
)
def test_generator_onnx_parity_through_onnxruntime(tmp_path, upsample, residual):
    torch.manual_seed(0)
    g = UNetGenerator(base_channels=4, image_size=(64, 32), upsample=upsample, residual=residual)
    if residual:
        torch.nn.init.normal_(g.head[0].weight, std=0.1)  # as after training (zero at init)
    g = _trained_like(g)
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    path = export_onnx(g, x, tmp_path / "g.onnx", input_names=["images"], output_names=["generated"])
    diff = check_onnx_parity(g, path, x, atol=1e-4)
    assert diff <= 1e-4
    ort = create_backend(["onnxruntime"], onnx_path=path)
    tb = create_backend(["torch"], onnx_path=path, module=g)
    batch = (np.random.default_rng(1).uniform(-1, 1, (5, 3, 64, 32))).astype(
        np.float32
    )  # a batch size never exported
    a, b = ort(batch)["generated"], tb(batch)["generated"]
    assert a.shape == (5, 3, 64, 32)
    assert np.max(np.abs(a - b)) <= 1e-4


def test_generator_file_roundtrip(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=(32, 16), base_channels=4)
    g = _trained_like(UNetGenerator(base_channels=4, image_size=(32, 16)))
    path = save_generator(tmp_path / "g.pt", g, cfg, extra={"note": "test"})
    loaded, cfg2, payload = load_generator(path)
    assert cfg2 == cfg and payload["note"] == "test" and not loaded.training
    x = torch.rand(1, 3, 32, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), g(x))
    with pytest.raises(ValueError, match="do not exist"):
        load_generator(tmp_path / "missing.pt")
    torch.save({"foo": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a de-occlusion generator"):
        load_generator(tmp_path / "bad.pt")
