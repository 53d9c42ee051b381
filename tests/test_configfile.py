from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from pipeline.configfile import ConfigError, apply_overrides, load_config


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float = Field(10.0, gt=0, description="frame-rate cap")
    mode: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="camera url")
    ingest: Inner = Field(default_factory=Inner, description="ingest settings")


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_full_path(tmp_path):
    path = write(tmp_path, "url: x\ningest:\n  fsp: 3\n")
    with pytest.raises(ConfigError, match=r"ingest\.fsp: unknown key \(value 3\)"):
        load_config(Outer, path)


def test_wrong_value_names_key_value_and_expectation(tmp_path):
    path = write(tmp_path, "url: x\ningest:\n  mode: carrier-pigeon\n")
    expected = r"ingest\.mode: bad value 'carrier-pigeon': Input should be 'tcp' or 'udp'"
    with pytest.raises(ConfigError, match=expected):
        load_config(Outer, path)


def test_missing_file_and_missing_key(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="url: required key is missing"):
        load_config(Outer, write(tmp_path, "ingest: {}\n"))


def test_overrides_and_env(tmp_path):
    path = write(tmp_path, "url: rtsp://${CAM_USER}:${CAM_PASS:-none}@host/\n")
    cfg = load_config(Outer, path, overrides=["ingest.fps=2.5", "ingest.mode=udp"], env={"CAM_USER": "bob"})
    assert cfg.url == "rtsp://bob:none@host/"
    assert cfg.ingest.fps == 2.5 and cfg.ingest.mode == "udp"
    with pytest.raises(ConfigError, match=r"\$\{CAM_USER\} is not set"):
        load_config(Outer, path, env={})
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["nonsense"])


def test_base_inheritance(tmp_path):
    (tmp_path / "base.yaml").write_text("url: a\ningest:\n  fps: 5\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ningest:\n  mode: udp\n")
    cfg = load_config(Outer, child)
    assert (cfg.url, cfg.ingest.fps, cfg.ingest.mode) == ("a", 5.0, "udp")
