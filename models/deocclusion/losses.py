"""Generator and discriminator objectives (de-occlusion paper, sec. 3.1, eq. 2-7; baseline of sec. 5.2).

Images are RGB in [-1, 1] (the generator's tanh range); the frozen feature and attribute networks
take ImageNet-normalised RGB, so ``to_imagenet`` converts on the way in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.attributes.losses import weighted_bce
from models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone

__all__ = [
    "to_imagenet",
    "generator_adversarial_loss",
    "discriminator_loss",
    "FeatureNetwork",
    "VGG16Features",
    "OSNetFeatures",
    "PerceptualLoss",
    "AttributeLoss",
    "pixel_loss",
    "build_feature_network",
]

logger = logging.getLogger(__name__)


def to_imagenet(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] RGB -> [0, 1] -> ImageNet mean/std normalisation (the convention of our backbones)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1.0) * 0.5 - mean) / std


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4, non-saturating: -log D(G(I_occ)) = softplus(-logit), averaged over the batch."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2 for D: maximise log D(I_gt) + log(1 - D(G(I_occ))), i.e. minimise the two BCE terms."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def pixel_loss(generated: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The sec. 5.2 "Baseline" content loss: MSE (mean) or SSE (sum per image, Fabbri et al. 2017)."""
    if kind == "mse":
        return F.mse_loss(generated, target)
    if kind == "sse":
        return (generated - target).pow(2).flatten(1).sum(1).mean()
    raise ValueError(f"pixel loss kind must be 'mse' or 'sse', got {kind!r}")


class FeatureNetwork(nn.Module):
    """A frozen network returning a list of intermediate feature maps for eq. 5-6."""

    layer_names: list[str]

    def freeze(self) -> FeatureNetwork:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> FeatureNetwork:  # always eval: BN statistics stay frozen
        return super().train(False)


class VGG16Features(FeatureNetwork):
    """VGG16 relu1_2/2_2/3_3/4_3 (the layer set L of sec. 5.2), ImageNet weights from a local file."""

    # indices into torchvision's vgg16().features of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3
    LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import vgg16

        net = vgg16(weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith("features.")]
        if missing:
            raise ValueError(f"{weights}: VGG16 feature weights missing {missing[:4]}...")
        self.features = net.features[: max(self.LAYERS.values()) + 1]
        self.layer_names = list(self.LAYERS)
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs, wanted = [], set(self.LAYERS.values())
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                outputs.append(x)
        return outputs


class OSNetFeatures(FeatureNetwork):
    """The pretrained person-ReID OSNet's stage outputs (stem, conv2, conv3, conv4).

    Used when no ImageNet VGG16 file is supplied: these features were trained to tell people apart
    by appearance (clothing colour, texture, carried objects), which is exactly what the generated
    crop must preserve for the attribute and ReID stages downstream; ImageNet VGG16 features are
    generic and, here, cannot be downloaded anyway.
    """

    def __init__(
        self, weights: str | Path | None, name: str = "osnet_x0_25", stages: Sequence[str] | None = None
    ):
        super().__init__()
        backbone = create_backbone(name, weights=weights)
        names = list(stages or backbone.stage_names[:4])
        unknown = [s for s in names if s not in backbone.stage_names]
        if unknown:
            raise ValueError(f"unknown OSNet stages {unknown}; expected some of {backbone.stage_names}")
        last = max(backbone.stage_names.index(s) for s in names)
        self.stages = nn.ModuleList(backbone.stages()[: last + 1])
        self._take = {backbone.stage_names.index(s) for s in names}
        self.layer_names = names
        if weights is None:
            logger.warning(
                "OSNet perceptual network has random weights (no weights file): fine for tests only"
            )
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._take:
                outputs.append(x)
        return outputs


def build_feature_network(
    vgg16_weights: str | Path | None, osnet_weights: str | Path | None
) -> FeatureNetwork:
    """VGG16 (the paper's choice) when its local ImageNet file is given, else the pretrained OSNet."""
    if vgg16_weights:
        logger.info("perceptual loss through VGG16 %s", vgg16_weights)
        return VGG16Features(vgg16_weights)
    logger.info("perceptual loss through OSNet x0.25 %s (no VGG16 file given)", osnet_weights)
    return OSNetFeatures(osnet_weights)


class PerceptualLoss(nn.Module):
    """Eq. 5-6: sum over layers of the mean squared feature difference between I_gt and I_gen.

    Eq. 5 averages over the W x H positions; we also average over channels (Johnson et al.'s
    normalisation) so layers of different widths weigh alike.
    """

    def __init__(self, network: FeatureNetwork, layer_weights: Sequence[float] | None = None):
        super().__init__()
        self.network = network.freeze()
        n = len(network.layer_names)
        self.layer_weights = list(layer_weights) if layer_weights is not None else [1.0] * n
        if len(self.layer_weights) != n:
            raise ValueError(
                f"layer_weights has {len(self.layer_weights)} entries for {n} layers {network.layer_names}"
            )

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gen_feats = self.network(to_imagenet(generated))
        with torch.no_grad():
            tgt_feats = self.network(to_imagenet(target))
        total = generated.new_zeros(())
        for w, g, t in zip(self.layer_weights, gen_feats, tgt_feats, strict=True):
            total = total + w * F.mse_loss(g, t)
        return total


class AttributeLoss(nn.Module):
    """Eq. 7 through a frozen attribute classifier (D's network): weighted BCE with exp(1 - r_i) / exp(r_i).

    ``classifier`` maps ImageNet-normalised RGB (B, 3, H, W) to attribute logits (B, A) (or a dict
    with key "logits"); ``pos_ratio`` is r_i, the training positive ratio of each attribute.
    """

    def __init__(
        self,
        classifier: nn.Module,
        pos_ratio: np.ndarray | Sequence[float] | torch.Tensor,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.input_size = tuple(input_size) if input_size is not None else None
        self.classifier = classifier.eval()
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.register_buffer("pos_ratio", torch.as_tensor(np.asarray(pos_ratio, dtype=np.float32)))

    def train(self, mode: bool = True) -> AttributeLoss:
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, generated: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = to_imagenet(generated)
        if self.input_size is not None and tuple(x.shape[2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        logits = self.classifier(x)
        if isinstance(logits, dict):
            logits = logits["logits"]
        return weighted_bce(logits, labels.to(logits.dtype), self.pos_ratio, scheme="exp")
