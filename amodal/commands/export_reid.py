"""Export an OAMN checkpoint's inference graph (images -> L2-normalised embedding + grader scores)
to ONNX with a dynamic batch axis, check parity against torch, and time inference per crop and,
with ``--gallery-entries``, what the "occlude them all" gallery pays per entry added and per query
(``models/reid/gallery.py``: 9 versions per entry; a query needs one version per grade in the
gallery).

    amodal export reid --weights models/weights/oamn_osnet_x0_25_peta.pt \\
        --onnx runs/export/oamn_osnet_x0_25_peta.onnx --json runs/export/oamn_export.json \\
        --benchmark-batches 1 32 --gallery-entries 64 --threads 1

Backends come from ``models.backends`` (torch, ONNX Runtime, TensorRT: ``--backends``); each one
that can run here is timed on the same random input.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from amodal.commands import command_parser
from models.backends import check_onnx_parity, create_backend, export_onnx, runtimes_from_names
from models.reid.encoder import BackendEncoder
from models.reid.gallery import OcclusionGallery
from models.reid.oamn import OAMNInference, load_oamn
from models.reid.occlusion_augment import NUM_GRADES, grade_index
from models.timing import call_seconds
from models.training import write_json

logger = logging.getLogger("export_reid")
OUTPUTS = ["embedding", "grade"]


def time_backend(backend, batch: int, hw: tuple[int, int], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call and per crop at one batch size."""
    x = np.random.default_rng(0).standard_normal((batch, 3, *hw)).astype(np.float32)
    times = call_seconds(lambda: backend(x), repeats, warmup)
    med = float(np.median(times)) * 1000
    return {"batch": batch, "ms_per_batch": med, "ms_per_crop": med / batch, "repeats": repeats}


def time_gallery(backend, hw: tuple[int, int], entries: int, queries: int = 32) -> dict[str, float]:
    """Milliseconds per entry added and per query matched, on random crops with given grades: a
    gallery with about 16 % of entries graded occluded (as VIPeR's gallery is by the shipped grader,
    every grade present) and an all-holistic one."""
    rng = np.random.default_rng(0)
    crops = rng.standard_normal((entries, 3, *hw)).astype(np.float32)
    query = rng.standard_normal((queries, 3, *hw)).astype(np.float32)
    n_occluded = max(NUM_GRADES - 1, entries * 16 // 100)
    mixed = np.r_[np.zeros(entries - n_occluded, int), np.arange(n_occluded) % (NUM_GRADES - 1) + 1]
    ids = [str(i) for i in range(entries)]
    out: dict[str, float] = {"entries": entries, "queries": queries}
    for name, grades in (("mixed", mixed), ("holistic", np.zeros(entries, int))):
        gallery = OcclusionGallery(backend_dim(backend, hw), entries, BackendEncoder(backend))
        t0 = time.perf_counter()
        gallery.add(ids, crops, grades=grades)
        out[f"add_ms_per_entry_{name}_gallery"] = (time.perf_counter() - t0) * 1000 / entries
        for qname, grade in (("holistic", 0), ("bottom_half", grade_index("bottom", 0.5))):
            t0 = time.perf_counter()
            gallery.match(query, grade=grade)
            out[f"match_ms_per_{qname}_query_{name}_gallery"] = (time.perf_counter() - t0) * 1000 / queries
    return out


def backend_dim(backend, hw: tuple[int, int]) -> int:
    return int(backend(np.zeros((1, 3, *hw), np.float32))["embedding"].shape[1])


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__name__, __doc__)
    parser.add_argument("--weights", required=True, help="OAMN checkpoint (amodal train reid oamn.pt)")
    parser.add_argument("--onnx", required=True, help="ONNX file to write")
    parser.add_argument("--json", help="write parity + timings here")
    parser.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (max abs difference)")
    parser.add_argument("--benchmark-batches", nargs="*", type=int, default=[], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per batch size")
    parser.add_argument(
        "--gallery-entries",
        type=int,
        default=0,
        help="also time the occlusion gallery (add and match) with this many entries per backend",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "onnxruntime", "tensorrt"],
        help="backends to time (each that can run here)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)

    model, cfg = load_oamn(args.weights)
    graph = OAMNInference(model).eval()
    outputs = OUTPUTS
    hw = tuple(cfg.input_size)
    example = torch.randn(2, 3, *hw)
    path = export_onnx(
        graph, example, args.onnx, input_names=["images"], output_names=outputs, dynamic_batch=True
    )
    parity = {str(b): check_onnx_parity(graph, path, torch.randn(b, 3, *hw), atol=args.atol) for b in (1, 5)}
    report: dict = {
        "weights": args.weights,
        "onnx": str(path),
        "input_size": list(hw),
        "outputs": outputs,
        "parity_max_abs": parity,
        "atol": args.atol,
        "threads": args.threads,
        "timings": {},
    }
    timed = args.benchmark_batches or args.gallery_entries > 0
    for name in args.backends if timed else []:
        try:
            backend = create_backend(
                runtimes_from_names([name], threads=args.threads),
                onnx_path=path,
                module=graph,
                device=args.device,
                input_names=["images"],
                output_names=outputs,
            )
        except (RuntimeError, ValueError) as exc:
            report["timings"][name] = {"unavailable": str(exc)}
            continue
        report["timings"][backend.name] = [
            time_backend(backend, b, hw, args.repeats) for b in args.benchmark_batches
        ]
        logger.info("%s: %s", backend.name, report["timings"][backend.name])
        if args.gallery_entries > 0:
            report.setdefault("gallery", {})[backend.name] = time_gallery(backend, hw, args.gallery_entries)
            logger.info("%s gallery: %s", backend.name, report["gallery"][backend.name])
    if args.json:
        write_json(args.json, report)
    logger.info("exported %s; parity %s", path, parity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
