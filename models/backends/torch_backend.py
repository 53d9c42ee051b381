"""Eager torch backend: the reference every other backend is checked against.

fp16 runs only on CUDA (CPU half-precision convolutions are slow or unsupported), so an fp16
request on CPU runs in fp32 and says so in the log.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models.backends.base import BackendUnavailable, InferenceBackend

__all__ = ["TorchBackend", "outputs_by_name"]

logger = logging.getLogger(__name__)


def outputs_by_name(outputs: object, output_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Map a module's output (tensor, tuple/list or dict) onto ``output_names`` in order."""
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    if isinstance(outputs, dict):
        outputs = tuple(outputs.values())
    if not isinstance(outputs, (tuple, list)):
        raise ValueError(f"module returned {type(outputs)}; expected a tensor, tuple or dict of tensors")
    if len(outputs) != len(output_names):
        raise ValueError(
            f"module returned {len(outputs)} outputs but output_names has "
            f"{len(output_names)}: {list(output_names)}"
        )
    return dict(zip(output_names, outputs, strict=True))


class TorchBackend(InferenceBackend):
    """Run an ``nn.Module`` in eval mode under ``torch.inference_mode``."""

    name = "torch"

    def __init__(
        self,
        module: nn.Module | None,
        input_names: Sequence[str] = ("images",),
        output_names: Sequence[str] = ("output",),
        device: str = "cpu",
        precision: str = "fp32",
    ):
        super().__init__(input_names, output_names, device, precision)
        if module is None:
            raise BackendUnavailable(self.name, "no torch module was given")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(self.name, f"device {device!r} requested but torch sees no CUDA device")
        if precision == "int8":
            raise BackendUnavailable(self.name, "int8 is only supported by the tensorrt backend")
        self._dtype = torch.float32
        if precision == "fp16":
            if device.startswith("cuda"):
                self._dtype = torch.float16
            else:
                logger.warning(
                    "torch backend: fp16 requested on %s; running fp32 (fp16 is CUDA-only here)", device
                )
                self.precision = "fp32"
        self._device = torch.device(device)
        # A copy so converting to half / moving devices never changes the caller's training module.
        module = copy.deepcopy(module).eval().to(self._device, dtype=self._dtype)
        self.module = module

    @torch.inference_mode()
    def run_tensors(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device-side entry point (no host copies): tensors in, tensors out in the module's dtype."""
        args = [
            feeds[name].to(self._device, dtype=self._dtype, non_blocking=True) for name in self.input_names
        ]
        return outputs_by_name(self.module(*args), self.output_names)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        outputs = self.run_tensors(tensors)
        return {k: v.detach().float().cpu().numpy() for k, v in outputs.items()}
