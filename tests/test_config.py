"""The schema is the single source of every parameter: configs validate, bad ones stop the run."""

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from leukoflow.engine.config import ConfigError, gpu_token, job_request, load_config, validate_config
from tests.conftest import REPO, run_workflow

SCHEMA_PATH = REPO / "config" / "schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
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


BAD_OVERRIDES = [
    ({"folds": {"n_fold": 4}}, "n_fold"),
    ({"dedup": {"max_distance": 99}}, "max_distance"),
    ({"dedup": {"conflict_policy": "merge"}}, "conflict_policy"),
    ({"data": {"source": "s3"}}, "source"),
    ({"resources": {"rules": {"train_detektor": {"mem_mb": 1000, "runtime": 10}}}}, "train_detektor"),
    ({"resources": {"retry_scale": 0.5}}, "resources.retry_scale"),
]


@pytest.mark.parametrize(("override", "named"), BAD_OVERRIDES)
def test_a_bad_config_is_refused_naming_the_key(override, named):
    with pytest.raises(ConfigError, match="invalid configuration") as refused:
        validate_config(_deep_merge(DEFAULT, override), SCHEMA_PATH)
    assert named in str(refused.value)


def test_the_default_config_passes_validation():
    validate_config(DEFAULT, SCHEMA_PATH)


@pytest.mark.e2e
def test_workflow_stops_before_any_job_on_a_bad_config(tmp_path: Path):
    """One `snakemake -n` case: the Snakefile validates the merged config (the rest test the function)."""
    override, named = BAD_OVERRIDES[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(override))
    result = run_workflow(tmp_path, "-n", configfile=bad, check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert "invalid configuration" in result.stdout + result.stderr


@pytest.mark.parametrize("device, gpus", [("cpu", 0), ("mps", 0), ("cuda", 1), ("0", 1), ("0,1", 2),
                                          ("0,1,2,3", 4)])
def test_gpu_resource_counts_the_named_devices(device, gpus):
    assert gpu_token(device) == gpus


def test_job_requests_come_from_config_and_grow_with_each_attempt():
    resources = {"retry_scale": 2.0, "default": {"mem_mb": 1000, "runtime": 10},
                 "rules": {"train_detector": {"mem_mb": 4000, "runtime": 30}}}
    assert job_request(resources, "train_detector", "mem_mb") == 4000
    assert job_request(resources, "train_detector", "runtime", attempt=2) == 60
    assert job_request(resources, "train_detector", "mem_mb", attempt=3) == 16000
    assert job_request(resources, "collect_metrics", "mem_mb") == 1000  # not listed: the default


def test_every_rule_declares_threads_and_its_requests():
    rules_dir = REPO / "workflow" / "rules"
    for path in rules_dir.glob("*.smk"):
        for block in path.read_text().split("rule ")[1:]:
            name = block.split(":")[0].strip()
            if not name.isidentifier():
                continue
            assert "threads:" in block, f"{path.name}: rule {name} declares no threads"
            assert f'memory_mb("{name}")' in block and f'runtime_min("{name}")' in block, \
                f"{path.name}: rule {name} does not take mem_mb/runtime from config['resources']"


def test_resource_entries_name_real_rules():
    rule_names = {name for path in (REPO / "workflow" / "rules").glob("*.smk")
                  for name in re.findall(r"^\s*rule (\w+):", path.read_text(), flags=re.M)}
    for name in ("config.yaml", "cytologia.yaml", "bccd.yaml"):
        listed = yaml.safe_load((REPO / "config" / name).read_text())["resources"]["rules"]
        assert set(listed) <= rule_names, name


@pytest.mark.e2e
def test_two_gpu_detector_training_asks_the_scheduler_for_two_gpus(tmp_path: Path):
    overlay = tmp_path / "two_gpus.yaml"
    overlay.write_text(yaml.safe_dump({"detectors": {"det1": {"device": "0,1"}},
                                       "resources": {"rules": {"train_detector": {"mem_mb": 12000, "runtime": 90}}}}))
    # the SLURM profile: locally Snakemake would cap gpu at the profile's budget of one
    result = run_workflow(tmp_path, "-n", "--forcerun", "train_detector", "--workflow-profile",
                          str(REPO / "profiles" / "slurm"), overlays=(overlay,))
    plan = result.stdout + result.stderr
    jobs = plan.split("rule train_detector:")[1:]
    det1 = [job for job in jobs if "wildcards: detector=det1" in job.split("Shell command")[0]]
    det2 = [job for job in jobs if "wildcards: detector=det2" in job.split("Shell command")[0]]
    assert det1 and det2
    assert all(", gpu=2" in job.split("Shell command")[0] for job in det1)
    assert all("mem_mb=12000" in job.split("Shell command")[0] and "runtime=90" in job for job in det1)
    assert all(", gpu=0" in job.split("Shell command")[0] for job in det2)  # the tiny config's CPU detector


def test_load_config_merges_a_configfile_over_the_defaults_key_by_key(tmp_path):
    defaults, configfile = tmp_path / "defaults.yaml", tmp_path / "run.yaml"
    defaults.write_text("seed: 1\ndata: {source: synthetic, images: 10}\nmodels: [a, b]\n")
    configfile.write_text("data: {images: 20}\nmodels: [c]\n")
    assert load_config(configfile, defaults=defaults) == {"seed": 1, "data": {"source": "synthetic", "images": 20},
                                                          "models": ["c"]}
    assert load_config(REPO / "config" / "config.yaml") == DEFAULT
