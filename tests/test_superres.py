"""The super-resolution family (models/superres, amodal train superres, amodal eval superres):
recipe validation, network contract, a resumable training run on crops made in the test, the
predictor, and the shipped checkpoints against bicubic on real Market-1501 query crops."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.superres.checkpoint import build_network, load_superres, save_superres
from models.superres.data import SRPairs, downsample, split_identities, to_tensor, upsample
from models.superres.network import SuperResolutionNet, interpolate
from models.superres.predictor import SuperResolver, sr_passes
from models.superres.recipe import ModelConfig, SuperResRecipe
from pipeline.configfile import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {2: REPO / "models/weights/superres_x2_market.pt", 4: REPO / "models/weights/superres_x4_market.pt"}


def _tool(name: str):
    return importlib.import_module(f"amodal.commands.{name}")


def _synthetic_crop(rng: np.random.Generator, colours: np.ndarray, h: int = 32, w: int = 16) -> np.ndarray:
    """A person-like crop with hard edges (blocks, stripes) that bicubic up-sampling blurs."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colours[0]
    top = int(rng.integers(4, 8))
    img[top : h // 2 + 2, 3 : w - 3] = colours[1]
    img[h // 2 + 2 :, 4 : w - 4] = colours[2]
    period = int(rng.integers(2, 4))
    img[top : h // 2 + 2 : period, 3 : w - 3] = colours[3]  # stripes on the upper body
    img[1:top, w // 2 - 2 : w // 2 + 2] = (200, 170, 150)
    return img


@pytest.fixture(scope="module")
def market_like(tmp_path_factory) -> Path:
    """A Market-style root: train/ with 8 identities x 4 crops (32x16 PNG), query/ with 3 x 2."""
    root = tmp_path_factory.mktemp("market_like")
    rng = np.random.default_rng(0)
    for folder, ids, per_id in (("train", 8, 4), ("query", 3, 2)):
        (root / folder).mkdir()
        for pid in range(1, ids + 1):
            colours = rng.integers(0, 256, (4, 3))
            for k in range(per_id):
                img = _synthetic_crop(rng, colours)
                name = f"{pid + (100 if folder == 'query' else 0):04d}_c{k % 2 + 1}s1_{k:06d}_00.png"
                cv2.imwrite(str(root / folder / name), img[..., ::-1])
    return root


# ---------------------------------------------------------------- recipe


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (None, "out_dir"),  # run-level keys live in run:, not at the top
        ("model", "widht"),
        ("data", "val_ids"),
        ("optim", "learning_rate"),
        ("loss", "perceptual"),
        ("run", "threds"),
    ],
)
def test_recipe_refuses_unknown_keys(section, key):
    data = {key: 1} if section is None else {section: {key: 1}}
    with pytest.raises(ConfigError, match=rf"{section + '.' if section else ''}{key}: unknown key"):
        load_config(SuperResRecipe, data=data)


def test_recipe_cross_field_checks_name_the_fields():
    with pytest.raises(ConfigError, match=r"data.image_size .* multiples of model.scale"):
        load_config(SuperResRecipe, data={"model": {"scale": 4}, "data": {"image_size": [30, 16]}})
    with pytest.raises(ConfigError, match="optim.epochs, optim.max_iters or optim.max_minutes"):
        load_config(SuperResRecipe, data={"optim": {"schedule": "constant"}})
    with pytest.raises(ConfigError, match="optim.schedule 'cosine' needs optim.max_iters"):
        load_config(SuperResRecipe, data={"optim": {"max_minutes": 1}})


@pytest.mark.parametrize("name", ["superres_x4_market.yaml", "superres_x2_market.yaml"])
def test_shipped_recipes_validate(name):
    recipe = load_config(SuperResRecipe, REPO / "configs" / name)
    assert recipe.model.scale == int(name.split("_x")[1][0])
    assert recipe.data.val_identities > 0 and recipe.optim.max_minutes <= 12


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("scale", [2, 4])
def test_network_shape_and_untrained_equals_interpolation(scale):
    torch.manual_seed(0)
    net = SuperResolutionNet(scale=scale, channels=8, blocks=2).eval()
    x = torch.rand(2, 3, 12, 7)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 3, 12 * scale, 7 * scale)
    torch.testing.assert_close(y, interpolate(x, scale, "bicubic"), rtol=0, atol=1e-6)
    # ... and that interpolation is OpenCV's INTER_CUBIC, the bicubic baseline of the evaluation
    img = (np.random.default_rng(1).random((12, 8, 3)) * 255).astype(np.uint8)
    with torch.no_grad():
        out = net(to_tensor(img[None]))[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(out, upsample(img, (12 * scale, 8 * scale), "bicubic"))


def test_network_forward_backward_every_parameter_learns():
    torch.manual_seed(0)
    net = SuperResolutionNet(scale=4, channels=8, blocks=2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, target = torch.rand(2, 3, 8, 4), torch.rand(2, 3, 32, 16)
    for _ in range(2):  # the zero-initialised up-sampler passes gradients on from the second step
        opt.zero_grad()
        loss = (net(x) - target).abs().mean()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"expected \(B, 3, h, w\)"):
        net(torch.rand(3, 8, 4))


def test_pairs_are_deterministic_and_split_keeps_identities_apart():
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 8, 3), dtype=np.uint8)
    a = SRPairs(images, 2, seed=3, patch_size=(8, 8))
    b = SRPairs(images, 2, seed=3, patch_size=(8, 8))
    for i in range(6):
        np.testing.assert_array_equal(a.pair(i)[1], b.pair(i)[1])
        assert a.pair(i)[0].shape == (4, 4, 3)
    lr, hr = SRPairs(images, 2, seed=0, train=False).pair(1)
    np.testing.assert_array_equal(hr, images[1])
    np.testing.assert_array_equal(lr, downsample(images[1], 2))
    pids = ["1", "1", "2", "3", "3", "4"]
    train, val = split_identities(pids, 2, seed=0)
    assert len(train) + len(val) == 6 and not {pids[i] for i in train} & {pids[i] for i in val}


# ---------------------------------------------------------------- training


def _recipe(tmp_path: Path, root: Path, out: Path, schedule: str = "constant") -> Path:
    path = tmp_path / f"recipe_{out.name}.yaml"
    path.write_text(
        "model: {scale: 2, channels: 16, blocks: 1}\n"
        f"data: {{root: {root}, train_folder: train, image_size: [32, 16], val_identities: 2}}\n"
        f"optim: {{lr: 3.0e-3, batch_size: 4, max_iters: 60, schedule: {schedule}}}\n"
        "loss: {content: l1}\n"
        f"run: {{out_dir: {out}, device: cpu, threads: 1, seed: 0, log_every: 10, val_every: 20}}\n"
    )
    return path


def test_training_resumes_exactly_and_lowers_the_loss(market_like, tmp_path):
    train = _tool("train_superres")
    # interrupted run: 20 iterations, then resumed from last.pt up to 60
    broken = _recipe(tmp_path, market_like, tmp_path / "resumed")
    assert train.main(["--config", str(broken), "--set", "optim.max_iters=20", "--no-progress"]) == 0
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["step"] == 20
    assert train.main(["--config", str(broken), "--resume", "--no-progress"]) == 0
    # the same run without interruption
    whole = _recipe(tmp_path, market_like, tmp_path / "whole")
    assert train.main(["--config", str(whole), "--no-progress"]) == 0

    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    straight = torch.load(tmp_path / "whole" / "last.pt", weights_only=False)
    assert resumed["step"] == straight["step"] == 60
    for k, v in straight["net"].items():
        torch.testing.assert_close(resumed["net"][k], v, msg=f"resumed run differs in {k}")
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 20, 40, 60]
    first, last = history[0], history[-1]
    assert first["psnr_sr"] == pytest.approx(first["psnr_bicubic"], abs=1e-6)  # step 0: bicubic
    assert last["val_loss"] < 0.85 * first["val_loss"], history
    assert last["psnr_sr"] > last["psnr_bicubic"] + 0.5, history
    net, cfg, payload = load_superres(tmp_path / "resumed" / "superres.pt")
    assert cfg.scale == 2 and payload["recipe"]["run"]["out_dir"].endswith("resumed")
    assert payload["step"] == max(history, key=lambda h: h["psnr_sr"])["step"]


def test_adversarial_term_runs(market_like, tmp_path):
    train = _tool("train_superres")
    recipe = _recipe(tmp_path, market_like, tmp_path / "gan", schedule="cosine")
    args = [
        "--set",
        "loss.lambda_adversarial=0.01",
        "--set",
        "optim.max_iters=3",
        "--set",
        "data.patch_size=[16,16]",
    ]
    assert train.main(["--config", str(recipe), *args, "--no-progress"]) == 0
    state = torch.load(tmp_path / "gan" / "last.pt", weights_only=False)
    assert "discriminator" in state and state["step"] == 3


# ---------------------------------------------------------------- predictor and evaluation


def test_predictor_upscales_crops_of_different_sizes(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(scale=4, channels=8, blocks=1)
    path = save_superres(tmp_path / "sr.pt", build_network(cfg), cfg)
    sr = SuperResolver.from_weights(path, batch_size=2)
    rng = np.random.default_rng(0)
    shapes = [(8, 4), (10, 6), (8, 4), (13, 7), (8, 4), (32, 16)]
    crops = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    out = sr.upscale(crops)
    assert [o.shape for o in out] == [(4 * h, 4 * w, 3) for h, w in shapes]
    for crop, o in zip(crops, out, strict=True):  # untrained = bicubic, and the order is kept
        np.testing.assert_array_equal(o, upsample(crop, o.shape[:2], "bicubic"))
    fixed = sr.upscale_to(crops, (128, 64))
    assert all(f.shape == (128, 64, 3) and f.dtype == np.uint8 for f in fixed)
    assert sr.upscale([]) == [] and sr.upscale_to([], (128, 64)) == []
    with pytest.raises(ValueError, match="crop 1: expected an RGB uint8"):
        sr.upscale([crops[0], crops[1].astype(np.float32)])
    with pytest.raises(FileNotFoundError, match="weights 'nope.pt' does not exist"):
        SuperResolver.from_weights("nope.pt")


def test_sr_passes_follows_the_complete_model_rule():
    assert sr_passes((32, 16), (128, 64), 4) == 1  # 4x smaller: SR
    assert sr_passes((64, 32), (128, 64), 4) == 1  # half size: SR x4, then area-down
    assert sr_passes((100, 50), (128, 64), 4) == 0  # nearly there: plain resize
    assert sr_passes((128, 64), (128, 64), 4) == 0 and sr_passes((256, 128), (128, 64), 2) == 0
    assert sr_passes((8, 4), (128, 64), 4) == 1 and sr_passes((8, 4), (128, 64), 4, max_passes=3) == 2
    assert sr_passes((64, 32), (128, 64), 2) == 1


def test_eval_tool_on_a_folder(market_like, tmp_path):
    cfg = ModelConfig(scale=2, channels=8, blocks=1)
    weights = save_superres(tmp_path / "x2.pt", build_network(cfg), cfg)
    out = tmp_path / "eval" / "sr.json"
    args = ["--weights", str(weights), "--data", str(market_like / "query"), "--json", str(out)]
    assert _tool("eval_superres").main([*args, "--format", "folder"]) == 0
    result = json.loads(out.read_text())
    q = result["scales"]["x2"]["quality"]
    assert result["crops"] == 6 and q["sr"]["psnr"] == pytest.approx(q["bicubic"]["psnr"])  # untrained
    assert Path(result["scales"]["x2"]["grid"]).is_file()


# ---------------------------------------------------------------- shipped weights, real crops


@pytest.mark.shared_assets
@pytest.mark.parametrize("scale", [4, 2])
def test_shipped_checkpoint_beats_bicubic_on_market_query(scale, shared_dir):
    path = SHIPPED[scale]
    assert path.is_file(), f"shipped weights {path} missing"
    assert path.stat().st_size <= 10 * 2**20
    sr = SuperResolver.from_weights(path)
    assert sr.scale == scale
    query = sorted((shared_dir / "datasets/Market-1501/query").glob("*.jpg"))
    pick = np.random.default_rng(0).choice(len(query), 32, replace=False)
    hr = [cv2.imread(str(query[i]))[..., ::-1].copy() for i in pick]
    lr = [downsample(h, scale) for h in hr]
    from models.deocclusion.image_metrics import psnr

    bicubic = np.mean([psnr(upsample(x, h.shape[:2]), h) for x, h in zip(lr, hr, strict=True)])
    ours = np.mean([psnr(s, h) for s, h in zip(sr.upscale(lr), hr, strict=True)])
    # shipped files: +1.6 dB (x4) and +2.2 dB (x2) on these 32 crops; the untrained net scores +0
    assert ours > bicubic + 0.8, f"x{scale}: SR {ours:.2f} dB vs bicubic {bicubic:.2f} dB"
