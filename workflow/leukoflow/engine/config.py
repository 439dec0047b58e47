"""Validate a workflow configuration against config/schema.yaml with messages that name the key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import jsonschema


REPO = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = Path("config/config.yaml")


class ConfigError(ValueError):
    """The configuration does not match the schema."""


# A configuration is a few hundred values; YAML aliases can make a 1 kB file stand for billions
# (an "alias bomb") that validation would walk and error messages would print.
MAX_CONFIG_VALUES = 100_000
MAX_MESSAGE_CHARS = 300


def load_config(configfile: str | Path, defaults: str | Path = REPO / DEFAULT_CONFIG) -> dict[str, Any]:
    """The default configuration with `configfile` merged over it key by key, as Snakemake merges
    `--configfile` over the Snakefile's `configfile:`."""
    config = yaml.safe_load(Path(defaults).read_text()) or {}
    merge_config(config, yaml.safe_load(Path(configfile).read_text()) or {})
    return config


def merge_config(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    """Update `base` in place: mappings merge key by key, any other value replaces."""
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = value


def validate_config(config: dict[str, Any], schema_path: str | Path) -> None:
    """Stop with one ConfigError naming every bad key: too many values (alias bomb), NaN or an
    infinity in any numeric key (they pass every range check), or a breach of the schema."""
    _refuse_alias_bomb(config)
    problems = [f"{where}: {value!r} is not a finite number" for where, value in _non_finite_numbers(config)]
    import jsonschema  # a workflow dependency: `leukoflow predict` ([predict] extra) loads configs without it

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems += [_describe(error) for error in sorted(validator.iter_errors(config), key=lambda e: list(e.path))]
    if problems:
        raise ConfigError("invalid configuration (see config/README.md):\n  " + "\n  ".join(problems))


def _refuse_alias_bomb(config: Any) -> None:
    """Count the values the configuration stands for (aliases expanded) without expanding it."""
    sizes: dict[int, int] = {}

    def size(node: Any, where: str) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a self-referencing alias counts once instead of recursing forever
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        total = 1 + sum(size(child, f"{where}.{key}") for key, child in children)
        if total > MAX_CONFIG_VALUES:
            raise ConfigError(f"invalid configuration: {where.lstrip('.') or '<top level>'} stands for more than "
                              f"{MAX_CONFIG_VALUES} values (YAML aliases expanding exponentially?)")
        sizes[id(node)] = total
        return total

    size(config, "")


def _non_finite_numbers(node: Any, where: str = "") -> list[tuple[str, float]]:
    if isinstance(node, float) and not math.isfinite(node):
        return [(where.lstrip(".") or "<top level>", node)]
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [found for key, child in children for found in _non_finite_numbers(child, f"{where}.{key}")]


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key(s) {', '.join(repr(key) for key in unexpected)}"
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(message)} characters)"
    return f"{where}: {message}"


def export_package_path() -> None:
    """Let rule scripts (also in conda envs and cluster jobs) import this checkout's package."""
    import os

    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def gpu_token(device: str) -> int:
    """The `gpu` resource a job asks for: one per listed CUDA device ('0,1' -> 2), none on CPU/MPS.

    'auto' takes a GPU only when the machine that plans the job has one, so a cluster config
    names its devices. Decided without importing torch (the Snakefile is parsed for every job).
    """
    import os

    if device == "auto":
        return int(Path("/dev/nvidiactl").exists() and os.environ.get("CUDA_VISIBLE_DEVICES") != "")
    if device in ("cpu", "mps"):
        return 0
    if device == "cuda":
        return 1
    return len([index for index in device.split(",") if index.strip()])


def job_request(resources: dict[str, Any], rule: str, key: str, attempt: int = 1) -> int:
    """`mem_mb` or `runtime` (minutes) of one attempt of `rule` from config['resources'].

    A rule without its own entry gets `default`; attempt n asks for retry_scale**(n-1) times the
    first request, so `--retries` re-submits a job killed for memory or time with more of both.
    """
    request = {**resources["default"], **resources["rules"].get(rule, {})}
    return int(math.ceil(request[key] * resources["retry_scale"] ** (attempt - 1)))
