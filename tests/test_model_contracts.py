"""What every model family promises, checked over one table of families rather than in each family's
own tests, so a new family is held to it by adding one ``Family`` entry (timm's habit over its models):
a recipe that refuses unknown keys and explains every field, a network that trains from random
weights, an export graph ONNX Runtime reproduces, and a shipped weight file that runs on a real crop.

The families' own tests (test_reid_model.py, test_attr_models.py, test_deocc_models.py,
test_deocc_export.py, test_two_stage.py, test_superres.py) hold the detailed checks; this file is the
uniform floor."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from pydantic import BaseModel
from torch import nn

from models.attributes.model import AttributeModelConfig, build_attribute_model, load_attribute_model
from models.attributes.predictor import AttributeExportWrapper
from models.attributes.recipe import AttributeRecipe
from models.backbones import IMAGENET_MEAN, IMAGENET_STD
from models.backends import check_onnx_parity, export_onnx
from models.data.peta_attributes import PETA_35_ATTRIBUTES
from models.deocclusion.checkpoint import build_generator, load_generator
from models.deocclusion.predictor import (
    INPUT_NAME,
    OUTPUT_NAME,
    REGION_NAME,
    TwoStageExport,
    load_deoccluder,
)
from models.deocclusion.recipe import DeocclusionRecipe
from models.deocclusion.recipe import ModelConfig as DeocclusionModelConfig
from models.deocclusion.two_stage import TwoStageDeoccluder, build_content_net, build_mask_net
from models.deocclusion.two_stage_recipe import TwoStageModelConfig, TwoStageRecipe
from models.predictor_io import network_input, resize_batch
from models.reid.config import OAMNModelConfig, ReIDRecipe
from models.reid.oamn import OAMN, OAMNInference, load_oamn
from models.reid.predictor import REID_OUTPUTS
from models.superres.checkpoint import build_network, load_superres
from models.superres.data import downsample, to_tensor
from models.superres.recipe import ModelConfig as SuperResModelConfig
from models.superres.recipe import SuperResRecipe
from pipeline.configfile import ConfigError, load_config

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
QUERY = "datasets/Market-1501/query"
#: random-weight batch size (two, so batch norm has a batch in training mode)
BATCH = 2

Shapes = Callable[[nn.Module, int, tuple[int, int]], list[tuple[int, ...]]]


@dataclass(frozen=True)
class Shipped:
    """A shipped file loaded as the product runs it: the export graph, its input size and how a BGR
    uint8 crop becomes its input."""

    graph: nn.Module
    input_hw: tuple[int, int]
    prepare: Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """One model family: what the contract needs to build, run, export and load it."""

    name: str
    recipe: type[BaseModel]
    #: the smallest recipe that validates (the unknown key is added to it)
    recipe_data: dict[str, Any]
    #: the export graph with random weights, from the family's config -> network constructor
    build: Callable[[], nn.Module]
    #: (height, width) of the random-weight graph's input
    input_hw: tuple[int, int]
    #: a random input batch of that size in the family's value range
    example: Callable[[int, tuple[int, int]], torch.Tensor]
    output_names: list[str]
    #: expected output shapes of a graph for a batch size and input size, in ``output_names`` order
    shapes: Shapes
    weights: str
    load: Callable[[Path], Shipped]
    #: what the training forward returns, when it is not the export graph's output (two-stage: the
    #: region is thresholded, so the guidance stage 1 produces carries the gradient)
    train_outputs: Callable[[nn.Module, torch.Tensor], list[torch.Tensor]] | None = None
    marks: list[Any] = field(default_factory=list)


def _outputs(result: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [result] if isinstance(result, torch.Tensor) else list(result)


def _imagenet(crop: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(network_input(crop[None], hw, mean, std))


def _signed(crop: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """BGR uint8 -> RGB in [-1, 1] at ``hw`` (the de-occlusion predictor's input)."""
    rgb = resize_batch(crop[None], hw)[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0)


# ---------------------------------------------------------------- ReID (OAMN)

REID_CONFIG = OAMNModelConfig(input_size=(64, 32), grader="softmax", grader_pool_hw=(2, 2))


def _reid_build() -> nn.Module:
    return OAMNInference(OAMN.from_config(REID_CONFIG, load_backbone_weights=False))


def _reid_shapes(graph: nn.Module, b: int, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    return [(b, graph.model.embedding_dim), (b, 5)]


def _reid_load(path: Path) -> Shipped:
    model, cfg = load_oamn(path)
    hw = (int(cfg.input_size[0]), int(cfg.input_size[1]))
    return Shipped(OAMNInference(model).eval(), hw, lambda crop: _imagenet(crop, hw))


# ---------------------------------------------------------------- attributes


def _attr_build() -> nn.Module:
    return AttributeExportWrapper(build_attribute_model(AttributeModelConfig(), list(PETA_35_ATTRIBUTES)))


def _attr_shapes(graph: nn.Module, b: int, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    a = len(graph.model.attribute_names)
    return [(b, a), (b, a)]


def _attr_load(path: Path) -> Shipped:
    model, bundle = load_attribute_model(path)
    hw = (int(bundle.input_size[0]), int(bundle.input_size[1]))
    mean, std = np.asarray(bundle.mean, np.float32), np.asarray(bundle.std, np.float32)
    return Shipped(
        AttributeExportWrapper(model).eval(),
        hw,
        lambda crop: torch.from_numpy(network_input(crop[None], hw, mean, std)),
    )


# ---------------------------------------------------------------- de-occlusion U-Net


def _unet_build() -> nn.Module:
    return build_generator(DeocclusionModelConfig(image_size=(32, 16), base_channels=4))


def _unet_load(path: Path) -> Shipped:
    generator, cfg, _ = load_generator(path)
    hw = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    return Shipped(generator, hw, lambda crop: _signed(crop, hw))


# ---------------------------------------------------------------- two-stage de-occlusion

TWO_STAGE_CONFIG = TwoStageModelConfig(
    image_size=(32, 16), mask_channels=4, templates=2, content_channels=4, discriminator_channels=4
)


def _two_stage_build() -> nn.Module:
    masks = build_mask_net(TWO_STAGE_CONFIG, torch.rand(2, 8, 4))
    return TwoStageExport(TwoStageDeoccluder(masks, build_content_net(TWO_STAGE_CONFIG)))


def _two_stage_train(graph: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(graph.model.infer(x).values())


def _two_stage_load(path: Path) -> Shipped:
    module, cfg, outputs = load_deoccluder(path)
    assert outputs == [OUTPUT_NAME, REGION_NAME], f"{path.name} did not load as a two-stage file: {outputs}"
    hw = (int(cfg.image_size[0]), int(cfg.image_size[1]))
    return Shipped(module, hw, lambda crop: _signed(crop, hw))


def _image_shapes(graph: nn.Module, b: int, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    return [(b, 3, *hw)]


def _image_and_region_shapes(graph: nn.Module, b: int, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    return [(b, 3, *hw), (b, 1, *hw)]


# ---------------------------------------------------------------- super-resolution

SR_CONFIG = SuperResModelConfig(scale=4, channels=8, blocks=1)


def _sr_shapes(graph: nn.Module, b: int, hw: tuple[int, int]) -> list[tuple[int, ...]]:
    return [(b, 3, hw[0] * graph.scale, hw[1] * graph.scale)]


def _low_resolution(crop: np.ndarray, scale: int) -> torch.Tensor:
    """BGR uint8 -> RGB in [0, 1], a Market-sized crop (128 x 64) brought down by ``scale``: the
    low-resolution input the network learnt from."""
    rgb = resize_batch(crop[None], (128, 64))[0, ..., ::-1]
    return to_tensor(downsample(np.ascontiguousarray(rgb), scale))[None]


def _sr_load(path: Path) -> Shipped:
    net, cfg, _ = load_superres(path)
    return Shipped(net, (128 // cfg.scale, 64 // cfg.scale), lambda crop: _low_resolution(crop, cfg.scale))


# ---------------------------------------------------------------- the table


def _rand_signed(b: int, hw: tuple[int, int]) -> torch.Tensor:
    return torch.rand(b, 3, *hw) * 2 - 1


FAMILIES = [
    Family(
        name="reid",
        recipe=ReIDRecipe,
        recipe_data={"model": {"grader": "softmax"}},
        build=_reid_build,
        input_hw=tuple(REID_CONFIG.input_size),
        example=lambda b, hw: torch.randn(b, 3, *hw),
        output_names=list(REID_OUTPUTS),
        shapes=_reid_shapes,
        weights="oamn_osnet_x0_25_market.pt",
        load=_reid_load,
    ),
    Family(
        name="attributes",
        recipe=AttributeRecipe,
        recipe_data={},
        build=_attr_build,
        input_hw=(64, 32),
        example=lambda b, hw: torch.randn(b, 3, *hw),
        output_names=["logits", "probabilities"],
        shapes=_attr_shapes,
        weights="attributes_part_osnet_x0_25.pt",
        load=_attr_load,
    ),
    Family(
        name="deocclusion_unet",
        recipe=DeocclusionRecipe,
        recipe_data={},
        build=_unet_build,
        input_hw=(32, 16),
        example=_rand_signed,
        output_names=[OUTPUT_NAME],
        shapes=_image_shapes,
        weights="deocclusion_unet16_peta_128x64.pt",
        load=_unet_load,
    ),
    Family(
        name="deocclusion_two_stage",
        recipe=TwoStageRecipe,
        recipe_data={"stage": "mask"},
        build=_two_stage_build,
        input_hw=tuple(TWO_STAGE_CONFIG.image_size),
        example=_rand_signed,
        output_names=[OUTPUT_NAME, REGION_NAME],
        shapes=_image_and_region_shapes,
        weights="deocclusion_two_stage_market.pt",
        load=_two_stage_load,
        train_outputs=_two_stage_train,
    ),
    Family(
        name="superres",
        recipe=SuperResRecipe,
        recipe_data={},
        build=lambda: build_network(SR_CONFIG),
        input_hw=(8, 4),
        example=lambda b, hw: torch.rand(b, 3, *hw),
        output_names=["images"],
        shapes=_sr_shapes,
        weights="superres_x4_market.pt",
        load=_sr_load,
    ),
]

PARAMS = [pytest.param(f, id=f.name, marks=f.marks) for f in FAMILIES]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds, through ``X | None``, ``list[X]`` and ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        if not info.description:
            missing.append(prefix + name)
        for nested in _models_in(info.annotation):
            missing += _undescribed(nested, f"{prefix}{name}.")
    return missing


# ---------------------------------------------------------------- 1. the recipe


@pytest.mark.parametrize("family", PARAMS)
def test_recipe_refuses_an_unknown_key_naming_it_and_describes_every_field(family: Family) -> None:
    load_config(family.recipe, data=family.recipe_data)  # the base of the refusals below is valid
    with pytest.raises(ConfigError, match="no_such_option"):
        load_config(family.recipe, data={**family.recipe_data, "no_such_option": 1})
    model_section = {**family.recipe_data.get("model", {}), "no_such_option": 1}
    with pytest.raises(ConfigError, match=r"model\.no_such_option"):
        load_config(family.recipe, data={**family.recipe_data, "model": model_section})
    assert _undescribed(family.recipe) == []


# ---------------------------------------------------------------- 2. random weights train


@pytest.mark.parametrize("family", PARAMS)
def test_random_weights_run_forward_and_backward(family: Family) -> None:
    torch.manual_seed(0)
    graph = family.build().train()
    x = family.example(BATCH, family.input_hw)
    out = _outputs(graph(x))
    assert [tuple(o.shape) for o in out] == family.shapes(graph, BATCH, family.input_hw)
    assert all(torch.isfinite(o).all() for o in out)
    trained = family.train_outputs(graph, x) if family.train_outputs else out
    # a random projection of every output: a plain sum is constant for softmax / L2-normalised outputs
    loss = sum((o * torch.randn_like(o)).sum() for o in trained if o.requires_grad)
    loss.backward()
    grads = {n: p.grad for n, p in graph.named_parameters() if p.grad is not None}
    assert grads, f"{family.name}: no parameter got a gradient"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"{family.name}: non-finite gradients in {bad[:5]}"
    assert any(g.abs().sum() > 0 for g in grads.values()), f"{family.name}: every gradient is zero"


# ---------------------------------------------------------------- 3. ONNX export


@pytest.mark.parametrize("family", PARAMS)
def test_export_graph_matches_onnx_runtime(family: Family, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    graph = family.build().eval()
    with torch.no_grad():  # off the initialisation: zero-initialised heads (super-resolution) export too
        for p in graph.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = family.example(BATCH, family.input_hw)
    path = export_onnx(
        graph, x, tmp_path / f"{family.name}.onnx", input_names=[INPUT_NAME], output_names=family.output_names
    )
    # a batch of another size: the batch axis is dynamic
    check_onnx_parity(graph, path, family.example(BATCH + 1, family.input_hw), atol=1e-4)


# ---------------------------------------------------------------- 4. shipped weights on a real crop


@pytest.mark.shared_assets
@pytest.mark.parametrize("family", PARAMS)
def test_shipped_weights_run_on_a_real_crop(family: Family, shared_dir: Path) -> None:
    path = WEIGHTS / family.weights
    assert path.is_file(), f"shipped weights {path} missing"
    shipped = family.load(path)
    crop = cv2.imread(str(sorted((shared_dir / QUERY).glob("*.jpg"))[0]))
    assert crop is not None and crop.shape == (128, 64, 3)
    x = shipped.prepare(crop)
    assert tuple(x.shape) == (1, 3, *shipped.input_hw)
    graph = shipped.graph.eval()
    with torch.no_grad():
        out = _outputs(graph(x))
    assert [tuple(o.shape) for o in out] == family.shapes(graph, 1, shipped.input_hw)
    assert all(torch.isfinite(o).all() for o in out), f"{family.name}: non-finite output"
