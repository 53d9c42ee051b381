"""Both attribute networks on every backbone: forward/backward, no NaN, gradients; the part partition;
eq. 1 on hand-set weights; the foreground-mask path (given arrays and a YAML-built YOLO seg model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.attributes.foreground import YoloForegroundMasker, full_masks
from models.attributes.mask_net import MaskAttentionAttributeNet, resize_mask
from models.attributes.model import AttributeModelConfig, build_attribute_model
from models.attributes.part_net import PartBasedAttributeNet, part_row_ranges
from models.backbones import create_backbone, list_backbones
from models.data.peta_attributes import PETA_35_ATTRIBUTES

NAMES = list(PETA_35_ATTRIBUTES)
UNUSED = ("backbone.fc.", "backbone.global_avgpool")  # the backbone's ReID head, not used for attributes


@pytest.mark.parametrize("arch", ["part", "mask"])
@pytest.mark.parametrize("backbone", list_backbones())
def test_forward_backward_every_backbone(arch, backbone):
    torch.manual_seed(0)
    model = build_attribute_model(AttributeModelConfig(arch=arch, backbone=backbone), NAMES)
    model.train()
    x = torch.randn(2, 3, 48, 16)  # smallest size every backbone takes (ResNet: 2x1 feature map)
    masks = torch.ones(2, 1, 48, 16) if arch == "mask" else None
    logits = model(x, masks)
    assert logits.shape == (2, 35) and torch.isfinite(logits).all()
    logits.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith(UNUSED)]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_part_partition_known_sizes():
    # Fabbri et al. sec. 4: 10 blocks, head-shoulder 1-4, upper 3-7, lower 6-10
    assert part_row_ranges(10) == {"head_shoulder": (0, 4), "upper_body": (2, 7), "lower_body": (5, 10)}
    assert part_row_ranges(320) == {
        "head_shoulder": (0, 128),
        "upper_body": (64, 224),
        "lower_body": (160, 320),
    }
    # 8-row feature map (128x64 input, stride 16): partial rows are rounded outwards
    assert part_row_ranges(8) == {"head_shoulder": (0, 4), "upper_body": (1, 6), "lower_body": (4, 8)}
    with pytest.raises(ValueError, match="height must be >= 1"):
        part_row_ranges(0)


def test_pool_mode_pools_rows_of_one_map_and_eq1():
    torch.manual_seed(0)
    net = PartBasedAttributeNet(create_backbone("osnet_x0_25"), ["a", "b"], dropout=0.0).eval()
    x = torch.randn(1, 3, 160, 64)  # 10 feature rows
    fmap = net.backbone.forward_features(x)
    body, parts = net.forward_features(x)
    assert torch.allclose(body, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(parts[:, 1], fmap[:, :, 2:7].mean(dim=(2, 3)), atol=1e-6)
    # eq. 1 with hand-set scorers: body scores 1, parts score 0 / 5 / -2 for attribute a
    with torch.no_grad():
        for layer in [net.body_scorer, *net.part_scorers]:
            layer.weight.zero_()
        net.body_scorer.bias.copy_(torch.tensor([1.0, 0.0]))
        for layer, val in zip(net.part_scorers, [0.0, 5.0, -2.0], strict=True):
            layer.bias.copy_(torch.tensor([val, -val]))
        out = net(x)
    assert out[0].tolist() == pytest.approx([1.0 + 5.0, 0.0 + 2.0])


def test_crop_mode_runs_four_passes():
    torch.manual_seed(0)
    net = PartBasedAttributeNet(create_backbone("osnet_x0_25"), ["a"], part_mode="crop").eval()
    x = torch.randn(1, 3, 80, 32)
    with torch.no_grad():
        body, parts = net.forward_features(x)
        # the lower-body pass saw image rows 40-79 only (blocks 6-10 of 80 rows)
        alone = net.backbone.forward_features(x[:, :, 40:80]).mean(dim=(2, 3))
    assert body.shape == (1, 128) and parts.shape == (1, 3, 128)
    assert torch.allclose(parts[:, 2], alone, atol=1e-5)


def test_mask_multiplication():
    torch.manual_seed(0)
    net = MaskAttentionAttributeNet(create_backbone("osnet_x0_25"), NAMES, dropout=0.0).eval()
    x = torch.randn(1, 3, 128, 32)
    with torch.no_grad():
        plain = net(x)
        ones = net(x, torch.from_numpy(full_masks(1, 128, 32)))
        top = torch.ones(1, 1, 128, 32)
        top[:, :, 64:] = 0  # background below the waist
        masked = net(x, top)
        # the glimpse is zero where the mask is: feature rows 4-7 of the 8-row map contribute nothing
        fmap = net.backbone.forward_features(x)
        expected = fmap[:, :, :4].sum(dim=(2, 3)) / (fmap.shape[2] * fmap.shape[3])
        assert torch.allclose(net.forward_features(x, top), expected, atol=1e-5)
    assert torch.allclose(plain, ones, atol=1e-6)
    assert not torch.allclose(plain, masked, atol=1e-4)
    assert net.task_names == ["full_body", "head", "upper_body", "lower_body", "footwear", "carrying"]
    assert resize_mask(top, (8, 2))[0, 0, :, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="masks must be"):
        resize_mask(torch.ones(2, 3, 8, 4), (8, 4))


@pytest.mark.slow
def test_yolo_seg_masker_from_yaml():
    from ultralytics import YOLO

    masker = YoloForegroundMasker(YOLO("yolo11n-seg.yaml", task="segment"), imgsz=64)
    crops = [np.random.default_rng(i).integers(0, 255, (128, 64, 3), dtype=np.uint8) for i in range(2)]
    masks = masker(crops)
    assert masks.shape == (2, 1, 128, 64) and masks.dtype == np.float32
    assert 0.0 <= masks.min() and masks.max() <= 1.0  # untrained model: no person found -> all-ones fallback
    with pytest.raises(ValueError, match="not found"):
        YoloForegroundMasker("/nonexistent/yolo-seg.pt")
