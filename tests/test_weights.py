"""Pretrained weights are declared, fetched over HTTP, verified by SHA-256 and loaded safely.

A local HTTP server on 127.0.0.1 serves generated weight files; nothing reaches the internet.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch

from leukoflow.classification import fetch_weights
from leukoflow.classification.model import build_model
from leukoflow.classification.spec import ClassifierSpec, model_defaults, with_defaults
from leukoflow.classification.weights import WeightsError
from tests.conftest import REPO, run_workflow


@pytest.fixture()
def served(tmp_path):
    """A resnet10t state dict as safetensors, served from a local HTTP server; yields (url, sha256, state)."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path / "www"
    root.mkdir()
    torch.manual_seed(11)
    state = {key: value.contiguous() for key, value in timm.create_model("resnet10t").state_dict().items()}
    save_file(state, root / "model.safetensors")
    digest = hashlib.sha256((root / "model.safetensors").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}/model.safetensors", "sha256": digest,
               "state": state, "server": server}
    finally:
        server.shutdown()


def _declared(served, target: Path, sha256: str | None = None) -> dict:
    return [{"name": "resnet10t_test", "url": served["url"],
             "sha256": served["sha256"] if sha256 is None else sha256, "file": str(target),
             "licence": "generated for the test"}]


def test_download_verify_then_offline_rerun_uses_the_cache(served, tmp_path):
    target = tmp_path / "weights" / "resnet10t.safetensors"
    first = fetch_weights(weights=_declared(served, target), timeout_s=10)
    assert first["downloaded"] == 1 and target.is_file()
    served["server"].shutdown()  # offline from here on
    again = fetch_weights(weights=_declared(served, target), timeout_s=1)
    assert again["cached"] == 1 and again["downloaded"] == 0 and again["unpinned"] == []


def test_a_hash_mismatch_is_refused_and_leaves_no_file(served, tmp_path):
    target = tmp_path / "weights" / "resnet10t.safetensors"
    with pytest.raises(WeightsError, match="refused"):
        fetch_weights(weights=_declared(served, target, sha256="0" * 64), timeout_s=10)
    assert not target.exists() and not list(target.parent.glob("*.partial"))
    # a corrupt file already in place is refused too, not silently used
    target.write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="delete the file"):
        fetch_weights(weights=_declared(served, target), timeout_s=10)


def test_the_loaded_backbone_equals_the_served_state_dict(served, tmp_path):
    target = tmp_path / "weights" / "resnet10t.safetensors"
    fetch_weights(weights=_declared(served, target), timeout_s=10)
    defaults = model_defaults(REPO / "config" / "schema.yaml")
    spec = ClassifierSpec.from_config(with_defaults(
        {"name": "r", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1, "batch_size": 2,
         "lr": 0.1, "weights": str(target)}, defaults))
    backbone = build_model(spec).backbone.state_dict()
    expected = {key: value for key, value in served["state"].items() if not key.startswith("fc.")}
    assert set(backbone) == set(expected)
    assert all(torch.equal(backbone[key], expected[key]) for key in expected)


@pytest.mark.e2e
def test_a_missing_weight_file_stops_the_cytologia_run_at_planning(tmp_path):
    data = tmp_path / "data" / "cytologia"
    (data / "images_cytologia").mkdir(parents=True)
    (data / "train.csv").write_text("NAME,x1,y1,x2,y2,class\n")
    (data / "test.csv").write_text("trustii_id,NAME\n")
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("yolo11s.pt",):  # the detector's weights are present, a classifier's are not
        (weights / name).write_bytes(b"placeholder")
    result = run_workflow(tmp_path, "-n", configfile=REPO / "config" / "cytologia.yaml", check=False)
    assert result.returncode != 0
    assert "MissingInputException" in result.stderr + result.stdout
    assert "weights/tf_efficientnetv2_m.in21k.safetensors" in result.stderr + result.stdout
    shutil.rmtree(weights)
    result = run_workflow(tmp_path, "-n", configfile=REPO / "config" / "cytologia.yaml", check=False)
    assert result.returncode != 0 and "weights/yolo11s.pt" in result.stderr + result.stdout
