"""Export a de-occluder (U-Net generator or two-stage file) to ONNX, check parity with torch, and
benchmark the CPU backends.

    amodal export deocclusion --weights models/weights/deocclusion_unet16_peta_128x64.pt \\
        --onnx runs/deocclusion.onnx [--bench --batches 1 32 --threads 1 --json runs/deocc_bench.json]

The export has a dynamic batch axis (input ``images``, output ``generated``, RGB in [-1, 1]; a
two-stage file adds ``region``, the pixels it restored, (N, 1, H, W) in {0, 1}); parity is
checked through the ONNX Runtime backend (max abs difference <= --atol, fp32).
``--bench`` times ms per crop for each available backend at each batch size (median of runs).
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from amodal.commands import command_parser
from models.backends import (
    BackendUnavailable,
    check_onnx_parity,
    create_backend,
    export_onnx,
    runtimes_from_names,
)
from models.deocclusion.predictor import INPUT_NAME, load_deoccluder
from models.timing import call_seconds
from models.training import set_threads, write_json

logger = logging.getLogger("export_deocclusion")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__name__, __doc__)
    p.add_argument("--weights", required=True, help="generator or two-stage file")
    p.add_argument("--onnx", required=True, help="output ONNX path")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (fp32)")
    p.add_argument("--bench", action="store_true", help="time the backends")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"], help="backends to time")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", help="fp32 / fp16 (CUDA)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="batch sizes to time")
    p.add_argument("--runs", type=int, default=10, help="timed runs per batch size (after 2 warm-ups)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    p.add_argument("--json", default=None, help="write parity and timings here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def bench(backend, batch: int, size: tuple[int, int], runs: int) -> dict[str, float]:
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, *size)).astype(np.float32)
    times = call_seconds(lambda: backend(x), runs)
    median = float(np.median(times))
    return {
        "batch": batch,
        "ms_per_batch": 1000 * median,
        "ms_per_crop": 1000 * median / batch,
        "min_ms_per_crop": 1000 * min(times) / batch,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    generator, cfg, outputs = load_deoccluder(args.weights)
    size = tuple(cfg.image_size)
    example = torch.rand(2, 3, *size) * 2 - 1
    path = export_onnx(generator, example, args.onnx, input_names=[INPUT_NAME], output_names=outputs)
    diff = check_onnx_parity(generator, path, example, atol=args.atol)
    print(
        f"exported {path} ({path.stat().st_size / 1e6:.2f} MB); ONNX Runtime vs torch max abs diff {diff:.2e}"
    )
    report: dict = {
        "onnx": str(path),
        "max_abs_diff": diff,
        "atol": args.atol,
        "image_size": list(size),
        "threads": args.threads,
        "timings": {},
    }
    if args.bench:
        for name in args.backends:
            try:
                backend = create_backend(
                    runtimes_from_names([name], threads=args.threads),
                    onnx_path=path,
                    module=generator,
                    device=args.device,
                    precision=args.precision,
                    input_names=[INPUT_NAME],
                    output_names=outputs,
                )
            except (BackendUnavailable, RuntimeError) as exc:
                print(f"{name}: cannot run here ({exc})")
                report["timings"][name] = {"unavailable": str(exc)}
                continue
            rows = [bench(backend, b, size, args.runs) for b in args.batches]
            report["timings"][name] = {"device": args.device, "precision": backend.precision, "rows": rows}
            for r in rows:
                print(
                    f"{name:12s} batch {r['batch']:3d}: {r['ms_per_crop']:.2f} ms/crop (median), "
                    f"{r['ms_per_batch']:.1f} ms/batch"
                )
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
