"""Validate a workflow configuration against config/schema.yaml with messages that name the key."""

from __future__ import annotations

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

    package_root = str(Path(__file__).resolve().parents[1])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def gpu_token(device: str) -> int:
    """The `gpu` resource a job asks for: 'auto' takes a GPU only on a machine that has one.

    Decided without importing torch (the Snakefile is parsed for every job).
    """
    import os

    if device == "auto":
        return int(Path("/dev/nvidiactl").exists() and os.environ.get("CUDA_VISIBLE_DEVICES") != "")
    return int(device not in ("cpu", "mps"))
