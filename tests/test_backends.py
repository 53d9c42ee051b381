"""Backend layer: ONNX export parity, selection/fallback with logged reasons, bad input, cache keys."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from models.backends import (
    BackendConfig,
    BackendUnavailable,
    OnnxParityError,
    OnnxRuntime,
    TensorRTRuntime,
    check_onnx_parity,
    create_backend,
    create_backend_from_config,
    export_onnx,
    onnx_io_spec,
)
from models.backends.engine_cache import EngineCache, engine_cache_key, engine_key_parts
from models.backends.engine_profile import EngineProfile
from models.backends.onnxruntime_backend import OnnxRuntimeBackend
from models.backends.torch_backend import TorchBackend


class TwoHeads(nn.Module):
    """A tiny two-output net like the grader (embedding + grade)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.emb = nn.Linear(8, 6)
        self.grade = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.conv(x).mean(dim=(2, 3))
        return self.emb(f), self.grade(f).softmax(-1)


@pytest.fixture()
def exported(tmp_path):
    torch.manual_seed(0)
    net = TwoHeads().eval()
    x = torch.randn(2, 3, 16, 8)
    path = export_onnx(
        net, x, tmp_path / "net.onnx", input_names=["images"], output_names=["embedding", "grade"]
    )
    return net, path, x


def test_export_parity_and_dynamic_batch(exported):
    net, path, x = exported
    diff = check_onnx_parity(net, path, x, atol=1e-4)
    assert 0.0 <= diff <= 1e-4
    inputs, outputs = onnx_io_spec(path)
    assert list(inputs) == ["images"] and inputs["images"][1:] == [3, 16, 8]
    assert isinstance(inputs["images"][0], str)  # dynamic batch axis
    assert list(outputs) == ["embedding", "grade"]
    ort = OnnxRuntimeBackend(path)
    big = np.random.default_rng(0).standard_normal((5, 3, 16, 8)).astype(np.float32)
    out = ort({"images": big})
    with torch.no_grad():
        emb, grade = net(torch.from_numpy(big))
    np.testing.assert_allclose(out["embedding"], emb.numpy(), atol=1e-4)
    np.testing.assert_allclose(out["grade"], grade.numpy(), atol=1e-4)


def test_parity_failure_is_reported(exported):
    net, path, x = exported
    with torch.no_grad():
        net.emb.bias.add_(1.0)  # the export no longer matches the module
    with pytest.raises(OnnxParityError, match="differs from torch"):
        check_onnx_parity(net, path, x, atol=1e-4)


def test_selection_falls_back_and_logs_reasons(exported, caplog, tmp_path):
    net, path, x = exported
    caplog.set_level(logging.INFO, logger="models.backends.select")
    backend = create_backend(
        preference=[TensorRTRuntime(engine_cache_dir=str(tmp_path / "engines")), "onnxruntime", "torch"],
        onnx_path=path,
        module=net,
        device="cpu",
    )
    assert backend.name == "onnxruntime"
    assert backend.skipped_reasons and backend.skipped_reasons[0].startswith("tensorrt:")
    assert "using backend onnxruntime" in caplog.text and "tensorrt cannot run here" in caplog.text
    out = backend(x.numpy())
    assert set(out) == {"embedding", "grade"} and out["embedding"].shape == (2, 6)
    # CUDA requested on a CPU-only onnxruntime -> falls to torch only if torch can do CUDA; else nothing runs.
    if not torch.cuda.is_available():
        with pytest.raises(
            RuntimeError, match="no inference backend can run here.*onnxruntime: CUDAExecutionProvider"
        ):
            create_backend(["onnxruntime", "torch"], onnx_path=path, module=net, device="cuda")


def test_torch_backend_matches_onnxruntime(exported):
    net, path, x = exported
    torch_b = create_backend(["torch", "onnxruntime"], onnx_path=path, module=net)
    assert isinstance(torch_b, TorchBackend) and torch_b.output_names == ["embedding", "grade"]
    ort_b = create_backend(["onnxruntime"], onnx_path=path)
    a, b = torch_b({"images": x.numpy()}), ort_b({"images": x.numpy()})
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-4)
    # fp16 on CPU is not silently claimed: torch reports fp32, onnxruntime refuses with a reason.
    half = create_backend(["onnxruntime", "torch"], onnx_path=path, module=net, precision="fp16")
    assert half.name == "torch" and half.precision == "fp32"
    assert "fp32" in half.skipped_reasons[0]


def test_missing_pieces_are_reasons_not_crashes(tmp_path):
    with pytest.raises(BackendUnavailable, match="does not exist"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")
    with pytest.raises(RuntimeError, match="torch: no torch module was given"):
        create_backend(["onnxruntime", "torch"], onnx_path=tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        create_backend(["openvino"], module=nn.Identity())


def test_bad_input_is_a_clear_error(exported):
    _, path, _ = exported
    backend = OnnxRuntimeBackend(path)
    with pytest.raises(ValueError, match=r"must be \(B,C,H,W\)"):
        backend(np.zeros((3, 16, 8), np.float32))
    with pytest.raises(ValueError, match="missing inputs"):
        backend({"pixels": np.zeros((1, 3, 16, 8), np.float32)})
    with pytest.raises(ValueError, match="floating point"):
        backend(np.zeros((1, 3, 16, 8), np.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        backend(np.zeros((0, 3, 16, 8), np.float32))


def test_backend_config_validation():
    cfg = BackendConfig(preference=["onnxruntime", "torch"], device="cpu")
    assert cfg.precision == "fp32"
    with pytest.raises(ValueError, match="twice"):
        BackendConfig(preference=["torch", "torch"])
    with pytest.raises(ValueError, match="extra"):
        BackendConfig(preferences=["torch"])
    backend = create_backend_from_config(BackendConfig(preference=["torch"]), module=nn.Identity())
    assert backend(np.ones((1, 3, 4, 4), np.float32))["output"].shape == (1, 3, 4, 4)


def test_an_onnxruntime_block_sets_the_session_threads(exported):
    _, path, _ = exported
    one = create_backend([OnnxRuntime(threads=1)], onnx_path=path)
    assert one.session.get_session_options().intra_op_num_threads == 1
    config = BackendConfig(preference=[{"type": "onnxruntime", "threads": 2}])
    two = create_backend_from_config(config, onnx_path=path)
    assert two.session.get_session_options().intra_op_num_threads == 2
    bare = create_backend(["onnxruntime"], onnx_path=path)
    assert bare.session.get_session_options().intra_op_num_threads == 0  # 0: ONNX Runtime's default


class _FakeTensorRT:
    """Stands in for ``TensorRTBackend`` (no TensorRT here): records the arguments it is given."""

    name = "tensorrt"
    calls: list[dict] = []

    def __init__(self, onnx_path, device, precision, cache_dir, profile, build, calibrator):
        self.calls.append(
            dict(device=device, cache_dir=cache_dir, profile=profile, build=build, calibrator=calibrator)
        )
        self.precision = precision
        self.profile = profile


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    from models.backends import tensorrt_backend, tensorrt_build

    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda: None)
    monkeypatch.setattr(tensorrt_backend, "TensorRTBackend", _FakeTensorRT)
    _FakeTensorRT.calls = []
    return _FakeTensorRT.calls


def test_a_tensorrt_block_reaches_the_backend_as_typed_arguments(exported, fake_tensorrt):
    _, path, _ = exported
    block = TensorRTRuntime(engine_cache_dir="cache/trt", build_engine=True, opt_batch=2)
    backend = create_backend([block, "torch"], onnx_path=path, device="cuda", max_batch=4)
    (call,) = fake_tensorrt
    assert (call["cache_dir"], call["build"], call["calibrator"]) == ("cache/trt", True, None)
    assert call["profile"] == EngineProfile("images", (3, 16, 8), 1, 2, 4)
    assert backend.max_batch == 4
    # a bare name takes the block's defaults; the config's max_batch is the profile's maximum
    config = BackendConfig(preference=["tensorrt"], device="cuda", max_batch=16)
    create_backend_from_config(config, onnx_path=path)
    assert (fake_tensorrt[1]["cache_dir"], fake_tensorrt[1]["build"]) == ("engines", False)
    assert fake_tensorrt[1]["profile"] == EngineProfile("images", (3, 16, 8), 1, 8, 16)
    # an explicit profile and calibrator (amodal build-engine's) pass through; the profile caps the chunk
    profile, calibrator = EngineProfile("images", (3, 16, 8), 1, 4, 8), object()
    capped = create_backend(
        ["tensorrt"], onnx_path=path, max_batch=64, profile=profile, calibrator=calibrator
    )
    assert fake_tensorrt[2]["profile"] is profile and fake_tensorrt[2]["calibrator"] is calibrator
    assert capped.max_batch == 8
    with pytest.raises(TypeError, match="engine_cache_dir"):
        create_backend(["tensorrt"], onnx_path=path, engine_cache_dir="engines")  # type: ignore[call-arg]


BASE = dict(
    trt_version="10.3.0",
    gpu_name="NVIDIA A10",
    compute_capability=(8, 6),
    model_hash="ab" * 32,
    precision="fp16",
    profile=EngineProfile("images", (3, 128, 64), 1, 8, 32),
)


@pytest.mark.parametrize(
    "change",
    [
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA T4"},
        {"compute_capability": (7, 5)},
        {"model_hash": "cd" * 32},
        {"precision": "int8"},
        {"profile": EngineProfile("images", (3, 128, 64), 1, 8, 64)},
        {"profile": EngineProfile("images", (3, 256, 128), 1, 8, 32)},
        {"profile": EngineProfile("images", (3, 128, 64), 1, 16, 32)},
    ],
)
def test_engine_cache_key_changes_with_every_part(change):
    base_key = engine_cache_key(**BASE)
    assert engine_cache_key(**BASE) == base_key  # deterministic
    assert engine_cache_key(**{**BASE, **change}) != base_key


def test_engine_cache_refuses_stale_or_foreign_engines(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    parts = engine_key_parts(**BASE)
    key = engine_cache_key(**BASE)
    assert cache.load(key, parts) is None
    cache.store(key, parts, b"engine-bytes")
    assert cache.load(key, parts) == b"engine-bytes"
    # Same file name, different GPU in the metadata (copied from another box): rebuilt, never loaded.
    foreign = engine_key_parts(**{**BASE, "gpu_name": "NVIDIA T4"})
    caplog.set_level(logging.WARNING)
    assert cache.load(key, foreign) is None
    assert "gpu_name" in caplog.text
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        replace(BASE["profile"], opt_batch=64)
