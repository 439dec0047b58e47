"""Install beyond the lock: pyproject's ranges hold the lock's pins, and `pip install ".[predict]"`
into a fresh virtual environment gives a working `leukoflow predict`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2).split("+")[0]
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in listed if canonicalize_name(Requirement(r).name) != "leukoflow"]


def test_the_lock_satisfies_every_dependency_range():
    pins = _lock_pins()
    unmet = [f"{r} (lock: {pins.get(canonicalize_name(r.name))})" for r in _requirements()
             if not r.specifier.contains(pins.get(canonicalize_name(r.name), "0"), prereleases=True)]
    assert not unmet, "ranges the lock does not satisfy: " + ", ".join(unmet)


def test_the_extras_are_the_documented_ones():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) == {"predict", "workflow", "dev"}
    assert {"torch", "ultralytics", "timm", "safetensors"} <= {canonicalize_name(Requirement(r).name)
                                                              for r in extras["predict"]}


@pytest.mark.e2e
def test_predict_extra_installs_into_a_fresh_venv_and_predicts(tmp_path):
    """A lab's laptop: a fresh venv (no system site packages), `pip install ".[predict]"`, predict on a bundle."""
    from tests import test_predict as helpers

    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(environment)
    pip = [str(environment / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile"]  # byte-compiling ~10k files costs half a CPU-minute; imports compile what they use
    installed = subprocess.run([*pip, f"{REPO}[predict]"], capture_output=True, text=True, timeout=1500)
    assert installed.returncode == 0, installed.stderr[-4000:]

    root = tmp_path / "world"
    smear = helpers.make_test_images(root)
    detectors = helpers._detector_weights(root)
    classifiers = {"mc": ("multiclass", helpers._classifier_checkpoints(root, "mc", "multiclass")),
                   "ml": ("multilabel", helpers._classifier_checkpoints(root, "ml", "multilabel"))}
    (root / "weights.json").write_text(json.dumps({"scheme": "best", "weights": {"mc": 1.0}, "alpha": 0.4,
                                                   "multiclass": ["mc"], "multilabel": ["ml"], "fallback_class": "PNN"}))
    helpers.export_world_bundle(root, root / "bundle", detectors, classifiers, smear)

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "YOLO_CONFIG_DIR")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    command = environment / "bin" / "leukoflow"
    out = tmp_path / "predictions.csv"
    done = subprocess.run([str(command), "predict", str(root / "images"), "--bundle", str(root / "bundle"),
                           "--out", str(out), "--min-score", "0.01"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images"] == 4 and out.is_file() and (tmp_path / "predictions.coco.json").is_file()
    where = subprocess.run([str(environment / "bin" / "python"), "-c", "import leukoflow; print(leukoflow.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert str(environment) in where.stdout  # the installed package ran, not this checkout
    about = subprocess.run([str(command), "predict", "--bundle", str(root / "bundle"), "--about"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert about.returncode == 0 and "## Classes and out-of-fold F1" in about.stdout
    assert (tmp_path / "cache" / "leukoflow" / "ultralytics").is_dir()
    assert sys.prefix != str(environment)
