"""The schema is the single source of every parameter: configs validate, bad ones stop the run."""

from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, run_workflow

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(base[key], value) if isinstance(value, dict) and key in base else value
    return merged


@pytest.mark.parametrize("name", ["config.yaml", "cytologia.yaml", "bccd.yaml"])
def test_shipped_configs_validate(name):
    jsonschema.validate(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)


def test_tiny_test_config_validates_on_top_of_default():
    tiny = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    jsonschema.validate(_deep_merge(DEFAULT, tiny), SCHEMA)


def _objects(node, path=""):
    if node.get("type") == "object":
        yield path, node
        for key, child in node.get("properties", {}).items():
            yield from _objects(child, f"{path}.{key}")


def test_every_object_is_closed_and_every_key_described():
    for path, node in _objects(SCHEMA):
        assert node.get("additionalProperties") is False, f"{path or '<root>'} is open"
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{path}.{key} has no description"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"folds": {"n_fold": 4}}, "n_fold"),
        ({"dedup": {"max_distance": 99}}, "max_distance"),
        ({"dedup": {"conflict_policy": "merge"}}, "conflict_policy"),
        ({"data": {"source": "s3"}}, "source"),
    ],
)
def test_workflow_refuses_a_bad_config_naming_the_key(tmp_path: Path, override, named):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    result = run_workflow(tmp_path, "-n", configfile=bad, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert "invalid configuration" in result.stdout + result.stderr
