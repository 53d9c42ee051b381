"""Build (or verify) the TensorRT engine for an ONNX export, into the keyed engine cache.

    amodal build-engine --onnx runs/deocclusion.onnx --cache-dir engines \\
        [--precision fp16|fp32|int8] [--min-batch 1 --opt-batch 8 --max-batch 32] \\
        [--calibration-crops DIR --calibration-batches 16]

The engine's cache key covers the TensorRT version, GPU name and compute capability, the ONNX
file's hash, the precision and the optimisation profile, so running this again after any of them
changes builds a new engine instead of reusing a stale or foreign one. INT8 needs calibration
crops (a folder of person crops, normalised like the model's input: RGB in [-1, 1]).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from amodal.commands import command_parser
from models.backends.base import BackendUnavailable
from models.backends.engine_profile import EngineProfile
from models.backends.export import onnx_io_spec
from models.backends.tensorrt_backend import TensorRTBackend
from models.backends.tensorrt_build import make_int8_calibrator
from models.data.images import image_files

logger = logging.getLogger("build_engine")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__name__, __doc__)
    p.add_argument("--onnx", required=True, help="ONNX export (models.backends.export_onnx)")
    p.add_argument("--cache-dir", default="engines", help="engine cache directory")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp16",
        help="engine precision (int8 needs --calibration-crops)",
    )
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch the engine accepts")
    p.add_argument("--opt-batch", type=int, default=8, help="batch size TensorRT tunes kernels for")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the engine accepts")
    p.add_argument("--calibration-crops", default=None, help="INT8: folder of crops for calibration")
    p.add_argument("--calibration-batches", type=int, default=16, help="INT8: batches of max-batch crops")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def calibration_batches(folder: str, size: tuple[int, int], batch: int, count: int):
    """Yield (batch, 3, H, W) float32 batches in [-1, 1] from a folder of crops (deterministic order)."""
    from models.deocclusion.data import load_crops, to_tensor

    paths = image_files(folder)
    if not paths:
        raise SystemExit(f"no calibration crops under {folder}")
    paths = paths[: batch * count]

    def generate():
        for start in range(0, len(paths) - batch + 1, batch):
            yield to_tensor(load_crops(paths[start : start + batch], size)).numpy().astype(np.float32)

    return generate


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs, _ = onnx_io_spec(args.onnx)
    name, dims = next(iter(inputs.items()))
    if any(not isinstance(d, int) for d in dims[1:]):
        raise SystemExit(f"input {name!r} has dynamic C/H/W {dims}; export with a fixed crop size")
    profile = EngineProfile(name, (dims[1], dims[2], dims[3]), args.min_batch, args.opt_batch, args.max_batch)
    calibrator = None
    if args.precision == "int8":
        if not args.calibration_crops:
            raise SystemExit("--precision int8 needs --calibration-crops DIR")
        batches = calibration_batches(
            args.calibration_crops, (dims[2], dims[3]), args.max_batch, args.calibration_batches
        )
        calibrator = make_int8_calibrator(
            batches, name, Path(args.cache_dir) / "calibration.cache", args.max_batch
        )
    try:
        backend = TensorRTBackend(
            args.onnx,
            device=args.device,
            precision=args.precision,
            cache_dir=args.cache_dir,
            profile=profile,
            build=True,
            calibrator=calibrator,
        )
    except BackendUnavailable as exc:
        print(f"cannot build a TensorRT engine here: {exc.reason}")
        return 2
    print(
        f"engine {backend.engine_path} (key {backend.cache_key}) ready; inputs {backend.input_names}, "
        f"outputs {backend.output_names}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
