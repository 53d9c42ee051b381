"""ONNX export of any model family, and the parity check that gates every export.

We use torch's TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and gives a
stable graph for plain conv nets; the opset is pinned so an export is reproducible and TensorRT /
ONNX Runtime versions can be matched against it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["export_onnx", "check_onnx_parity", "onnx_io_spec", "OnnxParityError", "ONNX_OPSET"]

logger = logging.getLogger(__name__)

ONNX_OPSET = 17


class OnnxParityError(ValueError):
    """The exported graph's outputs differ from torch's by more than the tolerance."""


def export_onnx(
    module: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    input_names: Sequence[str] = ("images",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    opset: int = ONNX_OPSET,
) -> Path:
    """Export ``module`` in eval mode (fp32, CPU) to ``path``; the batch axis is dynamic by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if len(args) != len(input_names):
        raise ValueError(
            f"{len(args)} example inputs but input_names has {len(input_names)}: {list(input_names)}"
        )
    was_training = module.training
    module.eval()
    dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)} if dynamic_batch else None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice and tracer warnings
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    import onnx

    onnx.checker.check_model(str(path))
    logger.info(
        "exported %s to %s (opset %d, dynamic batch %s)", type(module).__name__, path, opset, dynamic_batch
    )
    return path


def onnx_io_spec(path: str | Path) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    """Input and output names -> dims (ints, or the symbolic name of a dynamic axis)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def dims(value) -> list[int | str]:
        return [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value.type.tensor_type.shape.dim
        ]

    inputs = {v.name: dims(v) for v in model.graph.input if v.name not in initializers}
    outputs = {v.name: dims(v) for v in model.graph.output}
    return inputs, outputs


def check_onnx_parity(
    module: nn.Module,
    path: str | Path,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    atol: float = 1e-4,
) -> float:
    """Max abs difference between torch (fp32, CPU, eval) and the ONNX Runtime CPU backend.

    Raises ``OnnxParityError`` when it exceeds ``atol``; returns it otherwise.
    """
    from models.backends.onnxruntime_backend import OnnxRuntimeBackend
    from models.backends.torch_backend import outputs_by_name

    backend = OnnxRuntimeBackend(path, device="cpu", precision="fp32")
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = outputs_by_name(module(*[a.float().cpu() for a in args]), backend.output_names)
    finally:
        module.train(was_training)
    feeds = {
        name: a.detach().float().cpu().numpy() for name, a in zip(backend.input_names, args, strict=True)
    }
    got = backend(feeds)
    worst = 0.0
    for name, expected in reference.items():
        diff = float(np.max(np.abs(got[name] - expected.float().numpy()))) if expected.numel() else 0.0
        worst = max(worst, diff)
    if not np.isfinite(worst) or worst > atol:
        raise OnnxParityError(f"ONNX export {path} differs from torch by {worst:.3g} > atol {atol:g}")
    logger.info("ONNX parity for %s: max abs diff %.3g (atol %g)", path, worst, atol)
    return worst
