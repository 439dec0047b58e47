"""Generated documents (config reference, table schemas, conda pins) never drift from their sources."""

import yaml

from leukoflow import docs
from tests.conftest import REPO


def test_generated_documents_are_up_to_date():
    assert docs.main(["--check"]) == 0, "run `python -m leukoflow.docs` and commit the result"


def test_conda_environment_holds_exactly_the_lock_pins():
    environment = yaml.safe_load((REPO / "envs" / "leukoflow.yaml").read_text())
    pip_pins = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    lock = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.strip()]
    assert pip_pins == lock
    assert "torch==2.14.1" in pip_pins and "torchvision==0.29.1" in pip_pins


def test_config_reference_lists_every_schema_key():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    reference = (REPO / "config" / "README.md").read_text()
    for key, _ in docs._walk_schema(schema):
        assert f"| `{key}` |" in reference
