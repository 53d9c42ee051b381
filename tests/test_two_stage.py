"""Two-stage de-occlusion: exact training pairs, the two networks, their file, export parity and the
training / evaluation programs on a small real Market-1501 sample."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.deocclusion.content_recovery import ParsingGuidedAttention, composite
from models.deocclusion.mask_completion import mask_templates
from models.deocclusion.pairs import KINDS, PairBatches, border_cut, make_pair, pair_set
from models.deocclusion.parts import LIP_TO_PART, PARTS, group_parsing
from models.deocclusion.two_stage import (
    TwoStageDeoccluder,
    build_content_net,
    build_mask_net,
    exact_guidance,
    load_two_stage,
    save_two_stage,
)
from models.deocclusion.two_stage_recipe import TwoStageModelConfig, TwoStageRecipe

REPO = Path(__file__).resolve().parents[1]


def _person(h: int = 32, w: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic crop and its part map: head, upper body, legs on a textured background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    parts = np.zeros((h, w), np.uint8)
    parts[2:8, 6:10] = 1
    parts[8:18, 4:12] = 2
    parts[18:30, 5:11] = 5
    image[parts > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image, parts


def test_parsing_groups_cover_lip_and_refuse_unknown_classes():
    assert (
        len(LIP_TO_PART) == 20 and LIP_TO_PART[0] == 0 and set(LIP_TO_PART[1:]) == set(range(1, len(PARTS)))
    )
    assert group_parsing(np.array([[0, 13, 5, 16, 19]], np.uint8)).tolist() == [[0, 1, 2, 5, 6]]
    with pytest.raises(ValueError, match="parsing class 20"):
        group_parsing(np.array([20], np.uint8))


@pytest.mark.parametrize("kind", KINDS)
def test_pairs_are_exact(kind):
    clean, parts = _person()
    other = _person(seed=1)
    weights = [1.0 if k == kind else 0.0 for k in KINDS]
    for seed in range(10):
        pair = make_pair(clean, parts, lambda: other, np.random.default_rng(seed), weights)
        assert pair.kind == kind
        outside = ~pair.occluder
        assert np.array_equal(pair.occluded[outside], clean[outside])  # untouched outside the occluder
        assert np.array_equal(pair.clean, clean) and np.array_equal(pair.parts, parts)
        assert np.array_equal(pair.visible, (parts > 0) & ~pair.occluder)
        assert np.array_equal(pair.hidden, (parts > 0) & pair.occluder)
        if kind == "border":
            assert (pair.occluded[pair.occluder] == 0).all()
    # same seed, same pair
    a = make_pair(clean, parts, lambda: other, np.random.default_rng(3), weights)
    b = make_pair(clean, parts, lambda: other, np.random.default_rng(3), weights)
    assert np.array_equal(a.occluded, b.occluded) and np.array_equal(a.occluder, b.occluder)


def test_border_cut_blacks_out_one_side():
    clean, _ = _person()
    image, cut = border_cut(clean, np.random.default_rng(0))
    rows, cols = cut.any(axis=1), cut.any(axis=0)
    assert cut.any() and (rows.all() or cols.all())  # a full-width band or a full-height one
    assert (image[cut] == 0).all() and np.array_equal(image[~cut], clean[~cut])


def test_pairs_hide_some_body_and_refuse_bad_weights():
    clean, parts = _person()
    other = _person(seed=1)
    shares = [
        make_pair(clean, parts, lambda: other, np.random.default_rng(s)).hidden_share for s in range(20)
    ]
    assert np.mean(np.array(shares) >= 0.05) >= 0.9
    with pytest.raises(ValueError, match="one probability per kind"):
        make_pair(clean, parts, lambda: other, np.random.default_rng(0), (1.0, 0.0))


def test_pair_batches_are_seeded_and_use_the_occluder_set():
    people = [_person(seed=s) for s in range(6)]
    images = torch.from_numpy(np.stack([p[0] for p in people])).permute(0, 3, 1, 2).contiguous()
    parts = torch.from_numpy(np.stack([p[1] for p in people]))
    usable = np.ones(6, bool)
    a = PairBatches(images, parts, usable, list("aabbcc"), seed=5).sample(8)
    b = PairBatches(images, parts, usable, list("aabbcc"), seed=5).sample(8)
    assert torch.equal(a.occluded, b.occluded) and list(a.kinds) == list(b.kinds)
    # crops without a body map, occluded by people of another set: every crop once, in order
    zeros = torch.zeros_like(parts)
    fixed = pair_set(
        images,
        zeros,
        usable,
        list("uvwxyz"),
        0,
        occluders=(images, parts, usable, list("aabbcc")),
        min_hidden_share=0.0,
    )
    assert len(fixed) == 6 and not fixed.amodal.any()
    assert torch.equal(fixed.clean[0], images[0]) or torch.equal(fixed.clean[0], images[0].flip(-1))


def test_templates_are_kmeans_centres():
    masks = torch.zeros(40, 32, 16, dtype=torch.bool)
    masks[:20, :, :8] = True  # two clear poses
    masks[20:, :, 8:] = True
    centres = mask_templates(masks, 2, (8, 4), seed=0)
    assert centres.shape == (2, 8, 4)
    halves = sorted(centres[:, :, :2].mean(dim=(1, 2)).tolist())
    assert halves == pytest.approx([0.0, 1.0])


def _config() -> TwoStageModelConfig:
    return TwoStageModelConfig(
        image_size=(32, 16), mask_channels=4, templates=2, content_channels=4, discriminator_channels=4
    )


def test_mask_network_reads_the_initial_mask_only_when_given():
    torch.manual_seed(0)
    net = build_mask_net(_config(), torch.rand(2, 8, 4)).eval()
    x = torch.rand(2, 3, 32, 16) * 2 - 1
    initial = torch.rand(2, 1, 32, 16)
    with torch.no_grad():
        none = net(x)
        masked = net(x, initial, torch.tensor([False, True]))
        given = net(x, initial)
    assert none.modal.shape == (2, 1, 32, 16) and none.amodal_parts.shape == (2, len(PARTS), 32, 16)
    assert torch.allclose(masked.modal[0], none.modal[0])  # crop 0 was not given its mask
    assert torch.allclose(masked.modal[1], given.modal[1])
    assert not torch.allclose(given.modal[0], none.modal[0])


def test_attention_gathers_from_visible_pixels_only():
    torch.manual_seed(0)
    pga = ParsingGuidedAttention(4, stride=1, parts=len(PARTS)).eval()
    x = torch.randn(1, 4, 4, 2)
    visible = torch.zeros(1, 1, 4, 2)
    visible[..., :2, :] = 1.0
    x[..., :2, :] = 3.0  # every visible pixel carries the same feature
    parts = torch.softmax(torch.randn(1, len(PARTS), 4, 2), dim=1)
    captured = {}
    pga.out.register_forward_hook(lambda m, i, o: captured.setdefault("in", i[0]))
    with torch.no_grad():
        pga(x, parts, parts, visible)
    context = captured["in"][:, 8:]  # [x, parts stream, context stream]
    assert torch.allclose(
        context, torch.full_like(context, 3.0), atol=1e-5
    )  # eq. 6 averages visible features


def test_two_stage_keeps_visible_pixels_and_survives_its_file(tmp_path):
    torch.manual_seed(0)
    cfg = _config()
    model = TwoStageDeoccluder(build_mask_net(cfg, torch.rand(2, 8, 4)), build_content_net(cfg)).eval()
    with torch.no_grad():  # an occluder in the left half of every crop
        model.masks.first_head.weight[1].zero_()
        model.masks.first_head.bias[1] = -10.0
    x = torch.rand(3, 3, 32, 16) * 2 - 1
    x[:, :, :, :7] = -1.0  # a dark band stage 1 would have to find; here forced through the bias
    with torch.no_grad():
        out = model.infer(x)
        model.masks.first_head.bias[1] = 10.0
        everything = model.infer(x)
    assert not out["region"].any() and torch.equal(out["restored"], x)  # nothing found: nothing changes
    assert everything["region"].all() and not torch.equal(everything["restored"], x)
    exact = save_two_stage(tmp_path / "m32.pt", cfg, model.masks, model.content, half=False)
    loaded, loaded_cfg, _ = load_two_stage(exact)
    assert loaded_cfg == cfg
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        small, _, _ = load_two_stage(save_two_stage(tmp_path / "m16.pt", cfg, model.masks, model.content))
        assert (small(x) - model(x)).abs().max() < 0.05  # float16 storage, float32 compute
    assert (tmp_path / "m16.pt").stat().st_size < 0.7 * exact.stat().st_size
    save_two_stage(tmp_path / "masks.pt", cfg, model.masks)
    with pytest.raises(ValueError, match="mask-completion stage only"):
        load_two_stage(tmp_path / "masks.pt")


@pytest.mark.parametrize("content", ["pga", "unet"])
def test_two_stage_exports_to_onnx_with_parity(tmp_path, content):
    pytest.importorskip("onnxruntime")
    from models.backends import create_backend, export_onnx

    torch.manual_seed(0)
    cfg = _config().model_copy(update={"content": content})
    model = TwoStageDeoccluder(build_mask_net(cfg, torch.rand(2, 8, 4)), build_content_net(cfg)).eval()
    path = export_onnx(model, torch.zeros(1, 3, 32, 16), tmp_path / "m.onnx", output_names=["generated"])
    backend = create_backend(
        ["onnxruntime"], onnx_path=path, input_names=["images"], output_names=["generated"]
    )
    x = torch.rand(4, 3, 32, 16) * 2 - 1
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(backend(x.numpy())["generated"] - expected).max() < 1e-4


def test_exact_guidance_matches_the_pair():
    visible = torch.zeros(1, 8, 4, dtype=torch.bool)
    occluder = torch.zeros(1, 8, 4, dtype=torch.bool)
    parts = torch.zeros(1, 8, 4, dtype=torch.uint8)
    parts[0, 1:7, 1:3] = 2
    occluder[0, 5:, :] = True
    visible[0] = (parts[0] > 0) & ~occluder[0]
    g = exact_guidance(visible, occluder, parts)
    assert g["region"][0, 0, 4:].eq(1).all() and g["region"][0, 0, :3].eq(0).all()  # grown by one pixel
    assert g["amodal_parts"].sum(1).eq(1).all() and g["amodal"][0, 0, 1, 1] == 1
    assert g["visible"][0, 0, 4:].eq(0).all()  # nothing visible inside the region
    assert torch.equal(
        composite(torch.ones(1, 3, 8, 4), torch.zeros(1, 3, 8, 4), g["region"])[0, 0], 1 - g["region"][0, 0]
    )


def test_recipe_names_wrong_keys_and_needs_stage_one_for_content():
    with pytest.raises(ValueError, match="learning_rate"):
        TwoStageRecipe.model_validate({"stage": "mask", "optim": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="mask_weights"):
        TwoStageRecipe.model_validate({"stage": "content"})
    with pytest.raises(ValueError, match="stage"):
        TwoStageRecipe.model_validate({"stage": "both"})


# --- the programs on a small real Market-1501 sample ------------------------------------------


def _tool(name: str):
    return importlib.import_module(f"amodal.commands.{name}")


@pytest.fixture(scope="module")
def market_sample(tmp_path_factory, shared_dir) -> Path:
    """30 training identities (2 crops each, with parsing maps) and 10 query crops of Market-1501."""
    src = shared_dir / "datasets" / "Market-1501"
    root = tmp_path_factory.mktemp("market")
    for folder in ("bounding_box_train", "bounding_box_train_parsing", "query"):
        (root / folder).mkdir()
    parsing = {p.stem for p in (src / "bounding_box_train_parsing").iterdir()}
    by_id: dict[str, list[Path]] = {}
    for path in sorted((src / "bounding_box_train").iterdir()):
        if path.stem in parsing:
            by_id.setdefault(path.name[:4], []).append(path)
    for pid in sorted(by_id)[:30]:
        for path in by_id[pid][:2]:
            shutil.copy(path, root / "bounding_box_train" / path.name)
            shutil.copy(
                src / "bounding_box_train_parsing" / f"{path.stem}.png", root / "bounding_box_train_parsing"
            )
    for path in sorted((src / "query").iterdir())[:10]:
        shutil.copy(path, root / "query" / path.name)
    return root


def _run(tool, recipe: Path, out: Path, *overrides: str) -> dict:
    base = [
        "optim.batch_size=4",
        "run.log_every=1",
        "run.val_every=3",
        "run.progress=false",
        f"run.out_dir={out}",
    ]
    assert tool.main(["--config", str(recipe), *[a for o in (*base, *overrides) for a in ("--set", o)]]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_training_resumes_and_evaluation_reports(market_sample, shared_dir, tmp_path):
    train = _tool("train_two_stage")
    recipe = tmp_path / "mask.yaml"
    recipe.write_text(
        "stage: mask\n"
        "model: {image_size: [32, 16], mask_channels: 4, templates: 2, content_channels: 4,"
        " discriminator_channels: 4}\n"
        f"data: {{root: {market_sample}, held_out_ids: 5, val_pairs: 8}}\n"
        "optim: {lr: 0.003, betas: [0.9, 0.999], max_iters: 3}\n"
        "run: {threads: 1}\n"
    )
    mask_dir = tmp_path / "mask"
    first = _run(train, recipe, mask_dir, "optim.max_iters=6", "run.val_every=6")
    assert first["steps"] == 6 and "iou_amodal" in first["history"][-1]
    resumed = _run(train, recipe, mask_dir, "optim.max_iters=12", "run.val_every=6")
    assert resumed["steps"] == 12 and [h["step"] for h in resumed["history"]] == [6, 12]
    losses = [entry["loss"] for entry in resumed["losses"]]
    # seeded, and the BCE terms fall fast at lr 3e-3 from a fresh start
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert (mask_dir / "masks.pt").is_file()
    content = tmp_path / "content.yaml"
    content.write_text(
        recipe.read_text()
        .replace("stage: mask", "stage: content")
        .replace("templates: 2,", f"templates: 2, mask_weights: {mask_dir / 'masks.pt'},")
    )
    result = _run(
        train,
        content,
        tmp_path / "content",
        "optim.max_iters=3",
        f"loss.osnet_weights={shared_dir / 'models' / 'osnet_x0_25_msmt17.pth'}",
    )
    assert "ssim_restored" in result["history"][-1]
    weights = tmp_path / "content" / "two_stage.pt"
    model, cfg, payload = load_two_stage(weights)
    assert cfg.content == "pga" and payload["recipe"]["stage"] == "content"

    evaluate = _tool("eval_deocclusion")
    out = tmp_path / "eval.json"
    rc = evaluate.main(
        [
            "--weights",
            str(weights),
            "--data",
            str(market_sample),
            "--json",
            str(out),
            "--sets",
            "held-out",
            "query",
            "--query-limit",
            "6",
            "--reid-weights",
            "",
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    held = report["sets"]["held-out"]["restorers"]
    (row,) = held.values()
    assert {"ssim_occluded", "ssim_restored", "hidden_psnr_occluded", "region_ssim_restored"} <= set(row)
    assert 0 <= row["masks"]["iou_amodal"] <= 1
    query = report["sets"]["query"]
    assert query["crops"] == 6 and "hidden_psnr_occluded" not in next(iter(query["restorers"].values()))


def _file_with_occluder_bias(tmp_path: Path, bias: float) -> Path:
    """A small two-stage file whose stage 1 calls every pixel occluder (bias > 0) or none (< 0)."""
    torch.manual_seed(0)
    cfg = _config()
    masks = build_mask_net(cfg, torch.rand(2, 8, 4))
    with torch.no_grad():
        masks.first_head.weight[1].zero_()
        masks.first_head.bias[1] = bias
    return save_two_stage(tmp_path / f"bias{bias}.pt", cfg, masks, build_content_net(cfg))


def test_predictor_keeps_the_crop_outside_the_restored_region(tmp_path):
    from models.backends import BackendConfig
    from models.deocclusion.predictor import DeocclusionPredictor

    crops = np.random.default_rng(0).integers(0, 256, (3, 70, 30, 3), dtype=np.uint8)
    nothing = DeocclusionPredictor(
        _file_with_occluder_bias(tmp_path, -10.0), backend=BackendConfig(preference=["torch"])
    )
    assert nothing.composites and np.array_equal(nothing(crops), crops)  # full resolution, bit-exact
    path = _file_with_occluder_bias(tmp_path, 10.0)
    everything = DeocclusionPredictor(path, backend=BackendConfig(preference=["torch"]))
    restored = everything(crops)
    assert restored.shape == crops.shape and not np.array_equal(restored, crops)
    pytest.importorskip("onnxruntime")
    onnx = DeocclusionPredictor(path, backend=BackendConfig(preference=["onnxruntime"]), onnx="auto")
    assert onnx.backend_name == "onnxruntime"
    assert np.abs(onnx(crops).astype(int) - restored).max() <= 1
