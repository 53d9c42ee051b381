#!/usr/bin/env python3
"""Export an attribute checkpoint to ONNX, check parity with torch, and time inference per crop.

    amodal export attributes --weights models/weights/attributes_part_osnet_x0_25.pt \\
        --onnx runs/attributes.onnx --json runs/export_attributes.json [--with-mask] [--benchmark]

The graph takes ``images`` (B, 3, H, W) normalised RGB (and ``masks`` (B, 1, H, W) with
``--with-mask``) and returns ``logits`` and ``probabilities`` (B, A), batch axis dynamic. Parity is
checked through ``models.backends.check_onnx_parity`` (ONNX Runtime CPU). ``--benchmark`` times the
torch and ONNX Runtime backends at batch 1 and 32 on this machine (median of repeated runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from amodal.commands import command_parser
from models.attributes.model import load_attribute_model, save_attribute_model
from models.attributes.predictor import AttributeExportWrapper, feature_stride
from models.backends import check_onnx_parity, create_backend, export_onnx, runtimes_from_names
from models.timing import call_seconds
from models.training import set_threads, write_json

logger = logging.getLogger("export_attributes")


def time_backend(backend, feeds: dict[str, np.ndarray], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds per crop of ``backend(feeds)``."""
    times = call_seconds(lambda: backend(feeds), repeats, warmup)
    return 1000.0 * float(np.median(times)) / next(iter(feeds.values())).shape[0]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, type=Path, help="attribute checkpoint (.pt)")
    parser.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    parser.add_argument(
        "--ship",
        type=Path,
        default=None,
        help="also write a weights-only checkpoint here (no optimiser state), for models/weights/",
    )
    parser.add_argument("--json", type=Path, default=None, help="write parity (and timings) here")
    parser.add_argument("--with-mask", action="store_true", help="export a second input 'masks' (MAN-PAR)")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance on logits/probabilities")
    parser.add_argument(
        "--benchmark", action="store_true", help="time torch and ONNX Runtime at batch 1 and 32"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per setting")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    model, bundle = load_attribute_model(args.weights)
    if args.ship is not None:
        save_attribute_model(args.ship, model, bundle)
        print(f"wrote {args.ship} ({args.ship.stat().st_size / 1e6:.2f} MB)")
    h, w = bundle.input_size
    pool = feature_stride(model, (h, w)) if args.with_mask else None
    wrapper = AttributeExportWrapper(model, with_mask=args.with_mask, mask_pool=pool).eval()
    gen = torch.Generator().manual_seed(0)
    example = [torch.randn(2, 3, h, w, generator=gen)]
    inputs = ["images"]
    if args.with_mask:
        example.append((torch.rand(2, 1, h, w, generator=gen) > 0.3).float())
        inputs.append("masks")
    export_onnx(
        wrapper,
        example,
        args.onnx,
        input_names=inputs,
        output_names=["logits", "probabilities"],
        dynamic_batch=True,
    )
    max_abs = check_onnx_parity(wrapper, args.onnx, example, atol=args.atol)
    # a second batch size through the dynamic axis
    example5 = [torch.randn(5, 3, h, w, generator=gen)] + ([torch.ones(5, 1, h, w)] if args.with_mask else [])
    max_abs = max(max_abs, check_onnx_parity(wrapper, args.onnx, example5, atol=args.atol))
    print(f"ONNX parity: max |torch - onnxruntime| = {max_abs:.3g} (atol {args.atol:g})")
    payload: dict = {
        "weights": str(args.weights),
        "onnx": str(args.onnx),
        "max_abs_diff": max_abs,
        "atol": args.atol,
        "inputs": inputs,
        "input_size": [h, w],
        "onnx_bytes": args.onnx.stat().st_size,
    }
    if args.benchmark:
        timings = {}
        for name in ("torch", "onnxruntime"):
            backend = create_backend(
                runtimes_from_names([name], threads=args.threads),
                onnx_path=args.onnx,
                module=wrapper,
                device="cpu",
                input_names=inputs,
                output_names=["logits", "probabilities"],
            )
            for batch in (1, 32):
                feeds = {"images": np.random.default_rng(0).standard_normal((batch, 3, h, w), np.float32)}
                if args.with_mask:
                    feeds["masks"] = np.ones((batch, 1, h, w), np.float32)
                ms = time_backend(backend, feeds, args.repeats if batch == 1 else max(3, args.repeats // 4))
                timings[f"{name}_batch{batch}_ms_per_crop"] = ms
                print(f"{name:12s} batch {batch:2d}: {ms:7.2f} ms per crop ({args.threads} thread(s))")
        payload["timings"] = timings
        payload["threads"] = args.threads
    if args.json:
        write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
