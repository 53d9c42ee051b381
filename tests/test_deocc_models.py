"""De-occlusion networks and losses: shapes, gradients, no NaN, paper sizes, loss definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.attributes.losses import weighted_bce
from models.deocclusion import Discriminator, UNetGenerator
from models.deocclusion.losses import (
    AttributeLoss,
    OSNetFeatures,
    PerceptualLoss,
    discriminator_loss,
    generator_adversarial_loss,
    pixel_loss,
    to_imagenet,
)


def _all_params_have_grad(module: nn.Module) -> list[str]:
    return [
        n
        for n, p in module.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]


def test_generator_small_forward_backward():
    torch.manual_seed(0)
    g = UNetGenerator(base_channels=4, image_size=(32, 16))
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert y.abs().max() <= 1.0  # tanh output
    y.square().mean().backward()
    assert _all_params_have_grad(g) == []
    # 4 down blocks of 2 convs + bottleneck + 4 up blocks of 2 convs, 1x1 head
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (3, 3) for m in convs) == 2 * 4 + 2 + 2 * 4
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in g.modules()) == 1 and len(g.down) == 4


def test_generator_paper_size_with_attributes():
    """The paper's 320x128 input and the 'Entire' variant (attributes joined at the bottleneck)."""
    torch.manual_seed(0)
    g = UNetGenerator(base_channels=4, image_size=(320, 128), num_attributes=35, attribute_channels=2)
    assert g.bottleneck_size == (20, 8)
    x = torch.rand(2, 3, 320, 128) * 2 - 1
    a = torch.rand(2, 35, requires_grad=True)
    y = g(x, a)
    assert y.shape == (2, 3, 320, 128) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0  # the attributes reach the output
    assert _all_params_have_grad(g) == []
    with pytest.raises(ValueError, match="attribute-conditioned"):
        g(x)


def test_residual_generator_starts_as_identity_and_learns():
    torch.manual_seed(0)
    g = UNetGenerator(base_channels=4, image_size=(32, 16), residual=True)
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    assert torch.allclose(g(x), x, atol=2e-3)  # zero-initialised head: output = input
    target = torch.zeros_like(x)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    first = None
    for _ in range(5):
        loss = (g(x) - target).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first  # gradients reach the U-Net once the head moves off zero


def test_generator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiples of 16"):
        UNetGenerator(image_size=(100, 64))
    g = UNetGenerator(base_channels=2, image_size=(32, 16))
    with pytest.raises(ValueError, match="expected 32x16 images"):
        g.check_input(torch.zeros(1, 3, 64, 32))


def test_discriminator_structure_and_gradients():
    torch.manual_seed(0)
    d = Discriminator(base_channels=4, image_size=(32, 16))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (5, 5) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3  # none after the first conv
    x = torch.randn(3, 3, 32, 16)
    logits = d(x)
    assert logits.shape == (3,)
    p = d.probability(x)
    assert ((p > 0) & (p < 1)).all()
    discriminator_loss(logits, -logits).backward()
    assert _all_params_have_grad(d) == []


def test_adversarial_losses_match_their_equations():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    d = torch.sigmoid(logits)
    assert math.isclose(generator_adversarial_loss(logits).item(), float(-torch.log(d).mean()), rel_tol=1e-6)
    fake = torch.tensor([0.5, -1.0, 2.0])
    expected = float(-torch.log(d).mean() - torch.log(1 - torch.sigmoid(fake)).mean())
    assert math.isclose(discriminator_loss(logits, fake).item(), expected, rel_tol=1e-6)


def test_pixel_losses():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert math.isclose(pixel_loss(a, b, "mse").item(), 0.25)
    assert math.isclose(pixel_loss(a, b, "sse").item(), 0.25 * 48)
    with pytest.raises(ValueError, match="'mse' or 'sse'"):
        pixel_loss(a, b, "l1")


def test_perceptual_loss_through_pretrained_osnet(shared_dir):
    torch.manual_seed(0)
    net = OSNetFeatures(shared_dir / "models" / "osnet_x0_25_msmt17.pth")
    loss = PerceptualLoss(net)
    target = torch.rand(2, 3, 64, 32) * 2 - 1
    assert loss(target, target).item() == pytest.approx(0.0, abs=1e-7)
    gen = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    value = loss(gen, target)
    assert value.item() > 0
    value.backward()
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in net.parameters())  # frozen
    # eq. 6: sum over the layers of eq. 5's mean squared differences
    with torch.no_grad():
        feats_g, feats_t = net(to_imagenet(gen)), net(to_imagenet(target))
    manual = sum(torch.mean((a - b) ** 2) for a, b in zip(feats_g, feats_t, strict=True))
    assert value.item() == pytest.approx(manual.item(), rel=1e-5)


def test_attribute_loss_is_eq7_through_a_frozen_classifier():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    ratio = np.array([0.1, 0.5, 0.7, 0.02], np.float32)
    loss = AttributeLoss(clf, ratio, input_size=(16, 8))
    gen = (torch.rand(2, 3, 32, 16) * 2 - 1).requires_grad_(True)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]])
    value = loss(gen, labels)
    logits = clf(torch.nn.functional.interpolate(to_imagenet(gen), size=(16, 8), mode="bilinear"))
    assert value.item() == pytest.approx(weighted_bce(logits, labels, ratio, scheme="exp").item(), rel=1e-5)
    # eq. 7 weights: exp(1 - r) on positives, exp(r) on negatives
    p = torch.sigmoid(logits)
    r = torch.from_numpy(ratio)
    manual = -(
        torch.exp(1 - r) * labels * torch.log(p) + torch.exp(r) * (1 - labels) * torch.log(1 - p)
    ).mean()
    assert value.item() == pytest.approx(manual.item(), rel=1e-4)
    value.backward()
    assert gen.grad.abs().sum() > 0 and all(q.grad is None for q in clf.parameters())
