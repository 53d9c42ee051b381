"""Which backbone weights know attributes? A linear probe on frozen features, Market-1501 training ids.

    python tools/attribute_probe.py --data ../shared/datasets/Market-1501 \\
        --weights ../shared/models/osnet_x0_25_msmt17.pth ../shared/models/osnet_x0_25_market1501.pth

Market-1501's training identities (attributes per identity, the 30 of the shared vocabulary it
labels) are split by person as attribute training splits them (``split_holdout``: ``--held-out`` of
them, hashed with ``--seed``, so seed 0 holds out the Market persons the recipes hold out); the
others give at most ``--per-id`` crops each (``cap_images_per_id``). Per weights file: the
backbone's 512-d feature (``forward_head``) of every crop, standardised on the training part; one
logistic regression per attribute, weighted so positives and negatives count alike (then 0.5 is the
balanced threshold); mA of the held-out persons (``models.attributes.metrics.attribute_metrics``).
No test identity is read. Used to choose the attribute network's starting weights (its config cites
the figures); a probe, not a trained model.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.attributes.metrics import attribute_metrics
from models.attributes.recipe import cap_images_per_id, split_holdout
from models.backbones import create_backbone
from models.data.market_attributes import read_market_attributes
from models.data.reid_datasets import load_images, normalize
from models.training import write_json


@torch.no_grad()
def features(backbone, records, hw: tuple[int, int], batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(records), batch):
        images = normalize(load_images(records[i : i + batch], hw))
        out.append(backbone.forward_head(backbone.forward_features(images)))
    return torch.cat(out)


def probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, steps: int = 400) -> np.ndarray:
    """Held-out logits of one balanced logistic regression per attribute (Adam, small L2)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    weight = torch.zeros(x_train.shape[1], y_train.shape[1], requires_grad=True)
    bias = torch.zeros(y_train.shape[1], requires_grad=True)
    positive = y_train.mean(0).clamp(0.01, 0.99)
    optimizer = torch.optim.Adam([weight, bias], lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = x_train @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, y_train, pos_weight=(1 - positive) / positive)
        (loss + 1e-3 * weight.pow(2).sum()).backward()
        optimizer.step()
    return (x_test @ weight + bias).detach().numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", required=True, help="Market-1501 root (market_attribute.mat, bounding_box_train/)"
    )
    parser.add_argument("--weights", nargs="+", required=True, help="backbone weight files to compare")
    parser.add_argument("--backbone", default="osnet_x0_25")
    parser.add_argument("--input-size", nargs=2, type=int, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--held-out", type=float, default=0.1, help="share of the persons held out")
    parser.add_argument("--per-id", type=int, default=6, help="crops per training person")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = read_market_attributes(args.data, "train")
    columns = np.flatnonzero(np.asarray(data.labelled))
    names = [data.names[i] for i in columns]
    train, test = split_holdout(data, args.held_out, args.seed)
    train, test = cap_images_per_id(train, args.per_id).records, test.records
    y_train = np.stack([r.labels[columns] for r in train]).astype(np.float32)
    y_test = np.stack([r.labels[columns] for r in test]).astype(np.float32)
    print(f"{len(train)} training crops, {len(test)} held-out crops, {len(names)} attributes")
    results = {"train_crops": len(train), "held_out_crops": len(test), "weights": {}}
    for path in args.weights:
        started = time.time()
        backbone = create_backbone(args.backbone, weights=path).eval()
        hw = tuple(args.input_size)
        logits = probe(features(backbone, train, hw), torch.from_numpy(y_train), features(backbone, test, hw))
        metrics = attribute_metrics(torch.sigmoid(torch.from_numpy(logits)).numpy(), y_test, names)
        results["weights"][path] = {"mA": metrics["mA"], "attributes_scored": metrics["num_attributes"]}
        print(f"{path}: held-out mA {100 * metrics['mA']:.2f} ({time.time() - started:.0f} s)")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
