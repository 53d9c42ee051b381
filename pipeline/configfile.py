"""Load YAML files into typed pydantic models with errors a user can act on.

One loader serves the pipeline's graph configs and the training recipes in ``configs/``:

* ``${NAME}`` / ``${NAME:-default}`` in any string is replaced from the environment, so secrets
  (RTSP credentials) stay out of the file;
* ``base: other.yaml`` at the top level inherits another file (fast-reid style recipes);
* ``--set a.b.c=value`` overrides are applied after loading, values parsed as YAML scalars;
* validation errors name the full key path, the bad value and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_config", "load_yaml", "apply_overrides", "validate", "interpolate_env"]

M = TypeVar("M", bound=BaseModel)

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says which key and why."""


def interpolate_env(value: Any, env: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of a nested structure."""
    env = os.environ if env is None else env
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable ${{{name}}} is not set")

        return _ENV_PATTERN.sub(replace, value)
    if isinstance(value, dict):
        return {k: interpolate_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping, following ``base:`` inheritance (paths relative to the file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"{path}: 'base' inheritance loops back to {resolved}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file path, got {base!r}")
    return _merge(load_yaml(path.parent / base, _seen + (resolved,)), data)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings; the value is parsed as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {exc}") from exc
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if isinstance(child, list) and parts[depth + 1].isdigit():
                raise ConfigError(f"override {key}: indexing into lists is not supported; set the whole list")
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {key}: {where} is {child!r}, not a section with keys")
            node = child
        node[parts[-1]] = value
    return data


def _format_location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _lookup(data: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def validate(schema: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` against ``schema``; raise ConfigError naming key, bad value and expectation."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            key = _format_location(loc)
            if error["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown key (value {error.get('input')!r}); check the spelling")
                continue
            if error["type"] == "missing":
                lines.append(f"{key}: required key is missing")
                continue
            found, value = _lookup(data, loc)
            shown = repr(value) if found else repr(error.get("input"))
            lines.append(f"{key}: bad value {shown}: {error['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def load_config(
    schema: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    data: dict[str, Any] | None = None,
) -> M:
    """Load ``path`` (or start from ``data``), apply overrides, interpolate env, validate into ``schema``."""
    raw = load_yaml(path) if path is not None else dict(data or {})
    raw = apply_overrides(raw, overrides)
    raw = interpolate_env(raw, env)
    return validate(schema, raw, source=str(path) if path is not None else "config")
