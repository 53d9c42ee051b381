"""Predictors the stages run (ReID + grader, de-occlusion, attributes) on the shipped weights: tracker
crops (BGR uint8 (N, h, w, 3)) in, NumPy out; empty batches, chunking to the backend's max batch,
config errors, ONNX Runtime parity, and the weights-path helpers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from models.attributes.predictor import AttributeExportWrapper, AttributePredictor, AttributePredictorConfig
from models.backends import (
    BackendConfig,
    OnnxRuntime,
    create_backend,
    create_backend_from_config,
    export_onnx,
)
from models.backends.torch_backend import TorchBackend
from models.deocclusion.predictor import DeocclusionPredictor, DeocclusionPredictorConfig
from models.reid.encoder import TorchEncoder, prepare_crops
from models.reid.gallery import OcclusionGallery
from models.reid.grader import GradeThresholds
from models.reid.predictor import DEFAULT_REID_WEIGHTS, ReidPredictor, ReidPredictorConfig
from models.weights_path import (
    WEIGHTS_DIR,
    require_file,
    resolve_weights_path,
    shipped_weights,
    sibling_key,
)

REPO = Path(__file__).resolve().parents[1]
TORCH = BackendConfig(preference=["torch"])
ORT = BackendConfig(preference=[OnnxRuntime(threads=1)])
CONFIGS = [ReidPredictorConfig, DeocclusionPredictorConfig, AttributePredictorConfig]


def make_crops(n: int, h: int = 256, w: int = 128, seed: int = 0) -> np.ndarray:
    """Smooth random colour layouts plus a little noise: BGR uint8 (n, h, w, 3), each crop different."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        out[i] = np.clip(smooth + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return make_crops(5)


@pytest.fixture(scope="module")
def reid() -> ReidPredictor:
    return ReidPredictor.from_config(ReidPredictorConfig(backend=TORCH))


@pytest.fixture(scope="module")
def deocc() -> DeocclusionPredictor:
    return DeocclusionPredictor.from_config(DeocclusionPredictorConfig(backend=TORCH))


@pytest.fixture(scope="module")
def attrs() -> AttributePredictor:
    return AttributePredictor.from_config(AttributePredictorConfig(backend=TORCH))


# -- backend chunking -----------------------------------------------------------------------------


class BatchRecorder(nn.Module):
    """Per-sample output (mean colour, scaled) that records the batch sizes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.sizes.append(int(x.shape[0]))
        return x.mean(dim=(2, 3)), x[:, :1] * 2.0


def test_backend_chunks_to_its_max_batch():
    x = np.random.default_rng(0).standard_normal((5, 3, 4, 2)).astype(np.float32)
    backend = TorchBackend(BatchRecorder(), ["images"], ["mean", "double"])
    assert backend.max_batch is None
    whole = backend(x)
    backend.max_batch = 2
    chunked = backend(x)
    assert backend.module.sizes == [5, 2, 2, 1]
    for name in ("mean", "double"):
        assert chunked[name].shape == whole[name].shape
        np.testing.assert_allclose(chunked[name], whole[name], atol=1e-6)
    backend.max_batch = 5  # a batch that fits runs in one call
    backend(x)
    assert backend.module.sizes[-1] == 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            backend.max_batch = bad


def test_backend_rejects_inputs_of_different_batch_sizes():
    class Add(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    backend = TorchBackend(Add(), ["a", "b"], ["sum"])
    with pytest.raises(ValueError, match="one batch size"):
        backend({"a": np.zeros((2, 1, 2, 2), np.float32), "b": np.zeros((3, 1, 2, 2), np.float32)})


def test_create_backend_sets_max_batch():
    assert create_backend(["torch"], module=nn.Identity()).max_batch is None
    assert create_backend(["torch"], module=nn.Identity(), max_batch=4).max_batch == 4
    assert create_backend_from_config(TORCH, module=nn.Identity()).max_batch == 32
    small = BackendConfig(preference=["torch"], max_batch=3)
    assert create_backend_from_config(small, module=nn.Identity()).max_batch == 3


# -- weights paths ---------------------------------------------------------------------------------


def test_shipped_weights_resolve_relative_to_the_package(tmp_path, monkeypatch):
    assert WEIGHTS_DIR == REPO / "models" / "weights"
    assert shipped_weights("oamn_osnet_x0_25_peta.pt").is_file()
    with pytest.raises(ValueError, match="bare file name"):
        shipped_weights("models/weights/oamn_osnet_x0_25_peta.pt")
    monkeypatch.chdir(tmp_path)  # not the repository: bare names still find the shipped files
    for name in ("oamn_osnet_x0_25_peta.pt", "models/weights/oamn_osnet_x0_25_peta.pt"):
        assert resolve_weights_path(name) == WEIGHTS_DIR / "oamn_osnet_x0_25_peta.pt"
    local = tmp_path / "oamn_osnet_x0_25_peta.pt"
    local.write_bytes(b"x")  # a file of that name where the path points wins over the shipped one
    assert resolve_weights_path("oamn_osnet_x0_25_peta.pt") == Path("oamn_osnet_x0_25_peta.pt")
    assert resolve_weights_path("nope/x.pt") == Path("nope/x.pt")  # unchanged, so errors name it
    with pytest.raises(FileNotFoundError, match=r"^grade\.weights 'nope/x\.pt' does not exist$"):
        require_file("nope/x.pt", "grade.weights")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        require_file(str(tmp_path), "weights")
    assert sibling_key("grade.weights", "onnx") == "grade.onnx"
    assert sibling_key("weights", "onnx") == "onnx"


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_configs_describe_every_field_and_forbid_unknown_keys(config_cls):
    for name, field in config_cls.model_fields.items():
        assert field.description, f"{config_cls.__name__}.{name} has no description"
    assert resolve_weights_path(config_cls().weights).is_file()  # the default is a shipped file
    with pytest.raises(ValidationError, match="weight\n.*[Ee]xtra"):
        config_cls(weight="x.pt")
    with pytest.raises(ValidationError, match="[Ee]xtra"):
        config_cls.model_validate({"backend": {"prefs": ["torch"]}})


@pytest.mark.parametrize(
    ("predictor_cls", "config_cls"),
    [
        (ReidPredictor, ReidPredictorConfig),
        (DeocclusionPredictor, DeocclusionPredictorConfig),
        (AttributePredictor, AttributePredictorConfig),
    ],
)
def test_missing_files_are_config_errors_naming_key_and_path(predictor_cls, config_cls):
    missing = "models/weights/x.pt"
    with pytest.raises(FileNotFoundError, match=r"^grade\.weights 'models/weights/x\.pt' does not exist"):
        predictor_cls.from_config(config_cls(weights=missing), key="grade.weights")
    with pytest.raises(FileNotFoundError, match=r"^weights 'models/weights/x\.pt' does not exist"):
        predictor_cls.from_config(config_cls(weights=missing))
    with pytest.raises(FileNotFoundError, match=r"^describe\.onnx 'missing\.onnx' does not exist"):
        predictor_cls.from_config(config_cls(onnx="missing.onnx"), key="describe.weights")


# -- ReID + grader ---------------------------------------------------------------------------------


def test_reid_empty_one_and_batch(reid, crops):
    d = reid.embedding_dim
    emb, scores = reid(crops[:0])
    assert emb.shape == (0, d) and scores.shape == (0, 5)
    assert emb.dtype == np.float32 and scores.dtype == np.float32
    assert reid.grades(scores).shape == (0,)
    for batch in (crops[:1], crops):
        emb, scores = reid(batch)
        assert emb.shape == (len(batch), d) and scores.shape == (len(batch), 5)
        assert emb.dtype == np.float32 and scores.dtype == np.float32
        assert np.isfinite(emb).all() and np.isfinite(scores).all()
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
        assert ((scores >= 0) & (scores <= 1)).all()  # sigmoid location scores and visible fraction
        grades = reid.grades(scores)
        assert grades.dtype == np.int64 and grades.shape == (len(batch),)
        assert ((grades >= 0) & (grades <= 8)).all()
    one, _ = reid(crops[:1])
    np.testing.assert_allclose(one[0], emb[0], atol=1e-4)  # a crop's result does not depend on its batch


def test_reid_metadata_from_the_checkpoint(reid):
    assert reid.input_size == (256, 128) and reid.embedding_dim == 512
    assert reid.backend_name == "torch"
    assert isinstance(reid.thresholds, GradeThresholds)
    # the shipped Market-1501 checkpoint's calibration (held-out training identities)
    assert reid.model_config.grader == "visibility"
    assert (reid.thresholds.quarter, reid.thresholds.half) == pytest.approx((0.5, 0.6), abs=1e-4)
    assert reid.thresholds.visible == pytest.approx(0.81612, abs=1e-4)
    assert reid.reference_median == pytest.approx(0.94946, abs=1e-4)
    assert reid.offsets.shape == (9, 9) and reid.offsets.dtype == np.float32
    # explicit thresholds win: everything graded holistic when quarter = half = 1 (eq. 8 alone)
    scores = np.array([[0.9, 0.05, 0.03, 0.02, 0.4], [0.2, 0.6, 0.1, 0.1, 0.7]], np.float32)
    assert reid.grades(scores).tolist() != [0, 0]
    assert reid.grades(scores, GradeThresholds(1.0, 1.0)).tolist() == [0, 0]


def test_reid_prepare_matches_the_training_preprocessing(reid, crops):
    x = reid.prepare(crops)
    assert x.shape == (5, 3, 256, 128) and x.dtype == np.float32 and x.flags.c_contiguous
    reference = prepare_crops(list(crops[..., ::-1]), (256, 128))  # RGB crops, existing helper
    np.testing.assert_allclose(x, reference, atol=1e-5)
    small = reid.prepare(make_crops(2, 128, 64))
    assert small.shape == (2, 3, 256, 128)
    assert reid.prepare(crops[:0]).shape == (0, 3, 256, 128)


def test_reid_is_one_pass_of_the_checkpoint(reid, crops):
    """Same numbers as the eager OAMN encoder the gallery used before (one forward pass)."""
    from models.reid.oamn import load_oamn

    model, _ = load_oamn(WEIGHTS_DIR / DEFAULT_REID_WEIGHTS)
    ref_emb, ref_scores = TorchEncoder(model)(reid.prepare(crops))
    emb, scores = reid(crops)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


def test_reid_encoder_feeds_the_gallery(reid, crops):
    x = reid.prepare(crops[:3])
    emb, scores = reid.encoder(x)
    np.testing.assert_allclose(emb, reid(crops[:3])[0], atol=1e-5)
    t_emb, _ = reid.encoder(torch.from_numpy(x))  # the gallery's masking passes tensors
    np.testing.assert_allclose(t_emb, emb, atol=1e-6)
    e0, s0 = reid.encoder(x[:0])
    assert e0.shape == (0, 512) and s0.shape == (0, 5)
    with pytest.raises(ValueError, match="network input"):
        reid.encoder(np.zeros((1, 3, 128, 64), np.float32))
    gallery = OcclusionGallery(
        reid.embedding_dim, 8, reid.encoder, thresholds=reid.thresholds, offsets=reid.offsets
    )
    gallery.add(["a", "b", "c"], x, grades=[0, 3, 6])  # masked versions go through the encoder
    sims, _, slots = gallery.similarity(x[:1], grade=0)
    assert len(gallery) == 3 and sims.shape == (1, 3)
    # the query is entry "a" (both holistic): cosine 1 less the offset of grade pair (0, 0)
    assert sims[0, list(slots).index(0)] == pytest.approx(1.0 - reid.offsets[0, 0], abs=1e-4)


def test_reid_chunks_to_the_backend_max_batch(reid, crops):
    chunked = ReidPredictor.from_config(
        ReidPredictorConfig(backend=BackendConfig(preference=["torch"], max_batch=2))
    )
    assert chunked.backend.max_batch == 2
    emb, scores = chunked(crops)
    ref_emb, ref_scores = reid(crops)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((1, 256, 128, 3), np.float32), "uint8"),
        (np.zeros((256, 128, 3), np.uint8), r"\(N, h, w, 3\)"),
        (np.zeros((1, 256, 128, 4), np.uint8), r"\(N, h, w, 3\)"),
        (np.zeros((1, 0, 128, 3), np.uint8), "positive height"),
        ([np.zeros((256, 128, 3), np.uint8)], "np.ndarray"),
    ],
)
def test_bad_crops_are_clear_errors(reid, deocc, attrs, bad, match):
    for call in (reid, deocc, attrs.predict_bgr):
        with pytest.raises(ValueError, match=match):
            call(bad)


# -- de-occlusion ----------------------------------------------------------------------------------


def test_deocclusion_keeps_the_input_shape(deocc, crops):
    assert deocc.image_size == (128, 64) and deocc.backend_name == "torch"
    empty = deocc(crops[:0])
    assert empty.shape == (0, 256, 128, 3) and empty.dtype == np.uint8
    for batch in (crops[:1], crops, make_crops(3, 200, 90, seed=1), make_crops(2, 128, 64, seed=2)):
        out = deocc(batch)
        assert out.shape == batch.shape and out.dtype == np.uint8
    generated = deocc.generate(np.zeros((2, 3, 128, 64), np.float32))
    assert generated.shape == (2, 3, 128, 64) and np.isfinite(generated).all()
    assert np.abs(generated).max() <= 1.0  # tanh output, RGB in [-1, 1]
    assert deocc.generate(np.zeros((0, 3, 128, 64), np.float32)).shape == (0, 3, 128, 64)


def test_deocclusion_is_bgr_in_bgr_out(deocc):
    """Swapping the crop's channels swaps the result's: colour order is handled once, both ways."""
    crop = make_crops(1, 128, 64, seed=3)
    out = deocc(crop)
    x = crop[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0  # RGB in [-1, 1]
    expected = np.rint((deocc.generate(x).clip(-1, 1) + 1.0) * 127.5).transpose(0, 2, 3, 1)[..., ::-1]
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_deocclusion_chunks_to_the_backend_max_batch(deocc, crops):
    chunked = DeocclusionPredictor.from_config(
        DeocclusionPredictorConfig(backend=BackendConfig(preference=["torch"], max_batch=2))
    )
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3, 128, 64)).astype(np.float32)
    np.testing.assert_allclose(chunked.generate(x), deocc.generate(x), atol=1e-4)
    # uint8 results may round a value sitting at .5 differently: at most one level apart
    assert np.abs(chunked(crops).astype(int) - deocc(crops).astype(int)).max() <= 1


# -- attributes ------------------------------------------------------------------------------------


def test_attributes_bgr_and_rgb_inputs(attrs, crops):
    a = len(attrs.names)
    assert a == 35 and attrs.input_size == (128, 64) and attrs.backend_name == "torch"
    assert attrs.thresholds is None  # the shipped checkpoints store none
    for empty in (attrs.predict_bgr(crops[:0]), attrs([])):
        assert empty.shape == (0, a) and empty.dtype == np.float32
    for batch in (crops[:1], crops):
        probs = attrs.predict_bgr(batch)
        assert probs.shape == (len(batch), a) and probs.dtype == np.float32
        assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    # the tools' RGB list path and the tracker's BGR array path preprocess alike
    rgb = attrs([np.ascontiguousarray(c[..., ::-1]) for c in crops])
    np.testing.assert_allclose(attrs.predict_bgr(crops), rgb, atol=1e-5)
    assert attrs.prepare_bgr(crops).shape == (5, 3, 128, 64)


def test_attributes_chunks_to_the_backend_max_batch(attrs, crops):
    chunked = AttributePredictor.from_config(
        AttributePredictorConfig(backend=BackendConfig(preference=["torch"], max_batch=2))
    )
    np.testing.assert_allclose(chunked.predict_bgr(crops), attrs.predict_bgr(crops), atol=1e-4)


def test_attributes_from_weights_keeps_working():
    predictor = AttributePredictor.from_weights(WEIGHTS_DIR / "attributes_part_osnet_x0_25.pt")
    assert predictor.backend.max_batch is None  # plain create_backend: no chunking unless asked
    with pytest.raises(FileNotFoundError, match=r"^describe\.weights 'x\.pt' does not exist"):
        AttributePredictor.from_weights("x.pt", key="describe.weights")


# -- ONNX Runtime ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, reid, deocc, attrs):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("onnx")
    reid_graph = reid.backend.module  # the torch backend's copy of OAMNInference
    return {
        "reid": export_onnx(
            reid_graph, torch.zeros(2, 3, 256, 128), folder / "reid.onnx", output_names=["embedding", "grade"]
        ),
        "deocc": export_onnx(
            deocc.backend.module,
            torch.zeros(2, 3, 128, 64),
            folder / "deocc.onnx",
            output_names=list(deocc.backend.output_names),  # the two-stage default adds "region"
        ),
        "attrs": export_onnx(
            AttributeExportWrapper(attrs.module.model).eval(),
            torch.zeros(2, 3, 128, 64),
            folder / "attrs.onnx",
            output_names=["logits", "probabilities"],
        ),
    }


def test_reid_onnxruntime_parity_without_process_state(onnx_files, reid, crops):
    threads, environ = torch.get_num_threads(), dict(os.environ)
    ort = ReidPredictor.from_config(ReidPredictorConfig(backend=ORT, onnx=str(onnx_files["reid"])))
    assert ort.backend_name == "onnxruntime"
    assert torch.get_num_threads() == threads and dict(os.environ) == environ  # threads: ORT session only
    emb, scores = ort(crops)
    ref_emb, ref_scores = reid(crops)
    np.testing.assert_allclose(emb, ref_emb, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    e0, s0 = ort(crops[:0])
    assert e0.shape == (0, 512) and s0.shape == (0, 5)


def test_deocclusion_and_attributes_onnxruntime_parity(onnx_files, deocc, attrs, crops):
    d_ort = DeocclusionPredictor.from_config(
        DeocclusionPredictorConfig(backend=ORT, onnx=str(onnx_files["deocc"]))
    )
    assert d_ort.backend_name == "onnxruntime"
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 128, 64)).astype(np.float32)
    got, expected = d_ort.outputs(x), deocc.outputs(x)
    # a two-stage file thresholds its region (logit > 0) and feeds it back in: a logit within float
    # error of 0 may fall either way on another CPU and move the pixels around it, so the check is
    # that (almost) every value agrees, not the worst one
    close = np.abs(got["generated"] - expected["generated"]) <= 1e-4
    assert close.mean() > 0.99, f"ONNX Runtime and torch agree on {close.mean():.2%} of the values"
    if "region" in expected:
        assert (got["region"] == expected["region"]).mean() > 0.999
    a_ort = AttributePredictor.from_config(
        AttributePredictorConfig(backend=ORT, onnx=str(onnx_files["attrs"]))
    )
    assert a_ort.backend_name == "onnxruntime"
    np.testing.assert_allclose(a_ort.predict_bgr(crops), attrs.predict_bgr(crops), atol=1e-4)


def test_onnx_of_another_input_size_is_a_config_error(onnx_files):
    with pytest.raises(ValueError, match=r"grade\.onnx .* takes 128x64 images .* 256x128"):
        ReidPredictor.from_config(
            ReidPredictorConfig(backend=ORT, onnx=str(onnx_files["deocc"])), key="grade.weights"
        )


def test_onnx_auto_exports_once_into_the_cache_and_onnxruntime_runs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("AMODAL_CACHE", str(tmp_path))
    first = ReidPredictor.from_config(ReidPredictorConfig())  # onnx: auto, default preference
    assert first.backend_name == "onnxruntime"
    (export,) = (tmp_path / "onnx").glob(Path(DEFAULT_REID_WEIGHTS).stem + "-*.onnx")
    stamp = export.stat().st_mtime_ns
    again = ReidPredictor.from_config(ReidPredictorConfig())
    assert again.backend_name == "onnxruntime" and export.stat().st_mtime_ns == stamp, "exported once"
    torch_only = ReidPredictor.from_config(ReidPredictorConfig(onnx=None))
    crops = np.random.default_rng(1).integers(0, 255, (3, 256, 128, 3), dtype=np.uint8)
    np.testing.assert_allclose(again(crops)[0], torch_only(crops)[0], atol=1e-4)
    attrs = AttributePredictor.from_config(AttributePredictorConfig())
    deocc = DeocclusionPredictor.from_config(DeocclusionPredictorConfig())
    assert attrs.backend_name == deocc.backend_name == "onnxruntime"
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 3 and not list((tmp_path / "onnx").glob(".*"))


def test_without_onnx_the_runtime_backends_are_skipped_with_a_reason():
    predictor = DeocclusionPredictor.from_config(DeocclusionPredictorConfig(onnx=None))  # default preference
    assert predictor.backend_name == "torch"
    reasons = " ".join(predictor.backend.skipped_reasons)
    assert "onnxruntime: no ONNX file was given" in reasons
