"""TensorRT execution: runs wherever ``tensorrt`` and CUDA import, skipped with the reason elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.backends import BackendUnavailable, TensorRTRuntime, create_backend, export_onnx
from models.backends.tensorrt_backend import TensorRTBackend
from models.backends.tensorrt_build import import_tensorrt


def _trt_reason() -> str | None:
    try:
        import_tensorrt()
    except BackendUnavailable as exc:
        return exc.reason
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


REASON = _trt_reason()


def test_tensorrt_unavailable_is_a_reason_here(tmp_path):
    """Where TensorRT cannot run, the backend says why instead of crashing (always runs)."""
    onnx = export_onnx(nn.Conv2d(3, 4, 3, padding=1), torch.randn(1, 3, 8, 8), tmp_path / "c.onnx")
    if REASON is None:
        pytest.skip("TensorRT runs here; covered by test_tensorrt_engine_build_cache_and_run")
    with pytest.raises(BackendUnavailable):
        TensorRTBackend(onnx, device="cuda", cache_dir=tmp_path)


@pytest.mark.skipif(REASON is not None, reason=f"TensorRT cannot run here: {REASON}")
def test_tensorrt_engine_build_cache_and_run(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1), nn.Tanh()).eval()
    onnx = export_onnx(net, torch.randn(1, 3, 32, 16), tmp_path / "n.onnx")
    with pytest.raises(BackendUnavailable, match="no matching engine"):
        TensorRTBackend(onnx, precision="fp32", cache_dir=tmp_path / "eng")  # never builds unasked
    built = create_backend(
        [TensorRTRuntime(engine_cache_dir=str(tmp_path / "eng"), build_engine=True, opt_batch=2)],
        onnx_path=onnx,
        device="cuda",
        precision="fp32",
        max_batch=4,
    )
    assert built.name == "tensorrt" and built.engine_path.is_file()
    assert (built.profile.opt_batch, built.profile.max_batch, built.max_batch) == (2, 4, 4)
    cached = TensorRTBackend(onnx, precision="fp32", cache_dir=tmp_path / "eng", profile=built.profile)
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 16)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cached(x)["output"], ref, atol=1e-3)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = cached.run_device({"images": torch.from_numpy(x).cuda()})["output"]
    stream.synchronize()
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=1e-3)
