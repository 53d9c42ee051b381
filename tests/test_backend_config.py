"""The backend block of a config: runtimes as bare names or typed blocks (a union on ``type``), and the
errors a config loader reports for unknown block keys, moved top-level keys and repeated runtimes."""

from __future__ import annotations

import pytest

from models.backends import BackendConfig, OnnxRuntime, TensorRTRuntime, TorchRuntime, runtimes_from_names
from models.reid.predictor import ReidPredictorConfig
from pipeline.configfile import ConfigError, load_config, validate


def test_bare_names_and_blocks_validate_from_yaml(tmp_path):
    path = tmp_path / "backend.yaml"
    path.write_text(
        "preference: [tensorrt, {type: onnxruntime, threads: 2}, torch]\ndevice: cpu\nmax_batch: 4\n"
    )
    cfg = load_config(BackendConfig, path)
    assert cfg.preference == [TensorRTRuntime(), OnnxRuntime(threads=2), TorchRuntime()]
    assert cfg.names == ["tensorrt", "onnxruntime", "torch"] and cfg.max_batch == 4
    bare = validate(BackendConfig, {"preference": ["tensorrt", "onnxruntime", "torch"]})
    assert bare == BackendConfig()  # the default order, each runtime with its defaults
    block = validate(
        BackendConfig, {"preference": [{"type": "tensorrt", "opt_batch": 4, "build_engine": True}]}
    )
    assert block.preference == [TensorRTRuntime(opt_batch=4, build_engine=True)]


def test_an_unknown_key_in_a_block_is_refused_naming_its_path():
    data = {"backend": {"preference": ["torch", {"type": "onnxruntime", "thread": 3}]}}
    with pytest.raises(
        ConfigError, match=r"backend\.preference\[1\]\.onnxruntime\.thread: unknown key \(value 3\)"
    ):
        validate(ReidPredictorConfig, data)
    # a setting of one runtime written under another is refused the same way
    with pytest.raises(ConfigError, match=r"preference\[0\]\.torch\.threads: unknown key"):
        validate(BackendConfig, {"preference": [{"type": "torch", "threads": 1}]})
    with pytest.raises(
        ConfigError, match=r"preference\[0\]: bad value 'openvino'.*'tensorrt', 'onnxruntime', 'torch'"
    ):
        validate(BackendConfig, {"preference": ["openvino"]})
    with pytest.raises(ConfigError, match=r"preference\[0\]\.onnxruntime\.threads: bad value 0"):
        validate(BackendConfig, {"preference": [{"type": "onnxruntime", "threads": 0}]})


@pytest.mark.parametrize(
    ("key", "value", "spelling"),
    [
        ("threads", 1, "{type: onnxruntime, threads: 1}"),
        ("engine_cache_dir", "engines/x", '{type: tensorrt, engine_cache_dir: "engines/x"}'),
        ("build_engine", True, "{type: tensorrt, build_engine: true}"),
        ("opt_batch", 4, "{type: tensorrt, opt_batch: 4}"),
    ],
)
def test_an_old_top_level_key_names_its_new_spelling(key, value, spelling):
    data = {"backend": {"preference": ["onnxruntime", "torch"], key: value}}
    with pytest.raises(ConfigError) as err:
        validate(ReidPredictorConfig, data, source="grade.model")
    expected = (
        f"grade.model: backend.{key}: bad value {value!r}: moved: write preference: [..., {spelling}, ...]"
    )
    assert str(err.value) == expected


def test_a_runtime_listed_twice_or_none_is_refused():
    with pytest.raises(
        ConfigError, match=r"preference: .*lists a backend twice: \['onnxruntime', 'onnxruntime'\]"
    ):
        validate(BackendConfig, {"preference": ["onnxruntime", {"type": "onnxruntime", "threads": 1}]})
    with pytest.raises(ConfigError, match="at least one backend"):
        validate(BackendConfig, {"preference": []})


def test_blocks_are_frozen_and_the_stage_default_keeps_one_onnxruntime_thread():
    runtime = OnnxRuntime(threads=1)
    with pytest.raises(ValueError, match="frozen"):
        runtime.threads = 2  # type: ignore[misc]
    assert ReidPredictorConfig().backend.preference == [
        TensorRTRuntime(),
        OnnxRuntime(threads=1),
        TorchRuntime(),
    ]
    assert BackendConfig().preference[1] == OnnxRuntime()  # a bare block: the runtime's own default


def test_runtimes_from_names_give_onnxruntime_the_threads():
    assert runtimes_from_names(["torch", "onnxruntime"], threads=3) == [
        TorchRuntime(),
        OnnxRuntime(threads=3),
    ]
    with pytest.raises(ValueError, match="unknown backend 'openvino'"):
        runtimes_from_names(["openvino"])
