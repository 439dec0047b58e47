"""With the network unreachable, a detector training step runs and nothing tries to connect."""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

TRAIN_WITHOUT_NETWORK = textwrap.dedent(
    """
    import socket, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image, ImageDraw

    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network unreachable (test)")
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    socket.socket.connect = refuse

    from leukoflow.engine import offline
    offline.enforce(sys.argv[2] + "/ultralytics_cfg")
    offline.disable_ultralytics_integrations()
    from ultralytics import YOLO

    root = Path(sys.argv[2])
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for index in range(4):
            image = Image.new("RGB", (64, 64), (235, 205, 205))
            x, y = rng.integers(8, 32, size=2)
            ImageDraw.Draw(image).ellipse([x, y, x + 20, y + 20], fill=(90, 40, 140))
            image.save(root / "images" / split / f"{index}.jpg")
            (root / "labels" / split / f"{index}.txt").write_text(
                f"0 {(x + 10) / 64:.4f} {(y + 10) / 64:.4f} {20 / 64:.4f} {20 / 64:.4f}\\n")
    (root / "data.yaml").write_text(f"path: {root}\\ntrain: images/train\\nval: images/val\\nnames: ['WBC']\\n")
    YOLO("yolo11n.yaml").train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0,
                               device="cpu", plots=True, amp=False, pretrained=False, project=str(root / "runs"),
                               name="offline", exist_ok=True, verbose=False)
    assert (root / "runs" / "offline" / "weights" / "last.pt").exists()
    print("ATTEMPTS", len(attempts), attempts)
    """
)


@pytest.mark.slow
def test_detector_training_step_runs_with_the_network_unreachable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAIN_WITHOUT_NETWORK)
    result = subprocess.run([sys.executable, str(script), "x", str(tmp_path)], capture_output=True, text=True,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "workflow"),
                                               "HOME": str(tmp_path)}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ATTEMPTS 0 []" in result.stdout, result.stdout[-2000:]
    assert not (tmp_path / ".config" / "Ultralytics").exists(), "settings must stay out of the home dir"


def test_enforce_sets_every_switch(tmp_path, monkeypatch):
    from leukoflow.engine import offline

    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    for key in offline.ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    config_dir = offline.enforce(tmp_path / "cfg")
    assert all(os.environ[key] == value for key, value in offline.ENVIRONMENT.items())
    assert os.environ["YOLO_CONFIG_DIR"] == str(config_dir)
    assert (config_dir / "Ultralytics" / "Arial.ttf").stat().st_size > 0
