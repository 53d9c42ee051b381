"""Shared fixtures. Every test runs offline on a CPU: ultralytics is told never to download or
pip-install anything before it is first imported."""

from __future__ import annotations

import os
from pathlib import Path

# Must be set before ultralytics is imported anywhere in the test session.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("AMODAL_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (real footage, weights, PETA). CI sets AMODAL_REQUIRE_SHARED=1 so absence fails."""
    if not SHARED_DIR.is_dir():
        if os.environ.get("AMODAL_REQUIRE_SHARED") == "1":
            pytest.fail(f"shared assets not found at {SHARED_DIR}")
        pytest.skip(f"shared assets not found at {SHARED_DIR} (set AMODAL_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """``onnx: auto`` exports go to a folder of this test session, never the user's ~/.cache."""
    previous = os.environ.get("AMODAL_CACHE")
    os.environ["AMODAL_CACHE"] = str(tmp_path_factory.mktemp("amodal-cache"))
    yield
    if previous is None:
        os.environ.pop("AMODAL_CACHE", None)
    else:
        os.environ["AMODAL_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch intra-op thread for the whole suite. The tests use tiny networks, and on a 2-core
    machine two intra-op threads spin against the pipeline's own threads (up to 100x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
