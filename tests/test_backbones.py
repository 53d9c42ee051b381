"""Contract tests over every registered backbone: forward/backward at every split point, strict
loading of the shared torchreid OSNet weights, clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

from models.backbones import create_backbone, list_backbones

SHARED_OSNET = ["osnet_x0_25_msmt17.pth", "osnet_x0_25_market1501.pth"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def test_registry_lists_all_required():
    required = {"osnet_x0_25", "osnet_x0_5", "osnet_x0_75", "osnet_x1_0", "resnet18", "resnet50"}
    assert required <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_forward_backward_every_split(name):
    bb = create_backbone(name)
    bb.train()
    x = torch.randn(2, 3, 64, 32)
    feat = bb.forward_features(x)
    assert feat.shape[:2] == (2, bb.out_channels)
    out = bb.forward_head(feat)
    assert out.shape == (2, bb.feature_dim)
    out.square().mean().backward()
    for pname, p in bb.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has non-finite gradient"
    bb.eval()
    with torch.no_grad():
        ref = bb.forward_features(x)
        for at in bb.stage_names:
            lower, higher = bb.split(at)
            mid = lower(x)
            assert mid.shape[1] == bb.stage_channels(at)
            assert torch.allclose(higher(mid), ref, atol=1e-5), f"{name}: split at {at} changes the output"


@pytest.mark.parametrize("fname", SHARED_OSNET)
def test_shared_osnet_loads_strictly(shared_dir, fname):
    path = shared_dir / "models" / fname
    if not path.is_file():
        pytest.skip(f"{path} not present")
    bb = create_backbone("osnet_x0_25", weights=path).eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(bb.state_dict()["conv1.conv.weight"], state["conv1.conv.weight"])
    unused = set(state) - set(bb.state_dict())
    assert unused and all(k.startswith("classifier.") for k in unused)
    with torch.no_grad():
        f = bb.forward_head(bb.forward_features(torch.randn(2, 3, 128, 64)))
    assert f.shape == (2, 512) and torch.isfinite(f).all()


def test_strict_loading_rejects_wrong_width(shared_dir, tmp_path):
    path = shared_dir / "models" / SHARED_OSNET[0]
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with pytest.raises(ValueError, match="shape mismatches"):
        create_backbone("osnet_x0_5", weights=path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "extra.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="unexpected.*extra.weight"):
        create_backbone("osnet_x0_25", weights=bad)


def test_resnet_torchvision_layout_roundtrip(tmp_path):
    src = create_backbone("resnet18")
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    f = tmp_path / "r18.pth"
    torch.save(state, f)
    dst = create_backbone("resnet18", weights=f)
    assert torch.equal(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_resnet_last_stride_one_doubles_map():
    x = torch.randn(1, 3, 64, 32)
    for arch in ("resnet18", "resnet50"):
        a = create_backbone(arch).eval().forward_features(x)
        b = create_backbone(arch, last_stride=1).eval().forward_features(x)
        assert b.shape[-2:] == (a.shape[-2] * 2, a.shape[-1] * 2)


def test_bad_names_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'osnet_x9'"):
        create_backbone("osnet_x9")
    with pytest.raises(ValueError, match="unknown stage 'layer9'"):
        create_backbone("resnet18").split("layer9")
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        create_backbone("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="nothing is downloaded"):
        create_backbone("resnet18", pretrained=True)
