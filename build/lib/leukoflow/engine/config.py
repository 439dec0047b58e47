"""Validate a workflow configuration against config/schema.yaml with messages that name the key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml


class ConfigError(ValueError):
    """The configuration does not match the schema."""


def validate_config(config: dict[str, Any], schema_path: str | Path) -> None:
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [_describe(error) for error in sorted(validator.iter_errors(config), key=lambda e: list(e.path))]
    if problems:
        raise ConfigError("invalid configuration (see config/README.md):\n  " + "\n  ".join(problems))


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(part) for part in error.absolute_path) or "<top level>"
    if error.validator == "additionalProperties":
        unexpected = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where}: unknown key(s) {', '.join(repr(key) for key in unexpected)}"
    return f"{where}: {error.message}"


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
