"""Make every library of the stack work without a network, once, for the whole project.

ultralytics, MLflow and the Hugging Face hub all try the network on their own: a font download
on every detector training, telemetry threads, hub lookups. `enforce()` sets the switches that
docs/hardware.md §1 measured to give zero network lookups, keeps ultralytics' settings in one
leukoflow folder of the user's cache (never inside the checkout, never ultralytics' own default),
and ships the font it wants from matplotlib's copy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENVIRONMENT = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "MPLBACKEND": "Agg",
}
FONTS_WANTED = ("Arial.ttf", "Arial.Unicode.ttf")


def default_config_dir() -> Path:
    """ultralytics' settings and font folder: `$XDG_CACHE_HOME/leukoflow/ultralytics` (default ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "leukoflow" / "ultralytics"


def enforce(config_dir: str | Path | None = None) -> Path:
    """Set the offline switches in this process (children inherit them) and prepare the font."""
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or config_dir or default_config_dir())
    os.environ.update(ENVIRONMENT)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    _ship_fonts(config_dir / "Ultralytics")
    return config_dir


def _ship_fonts(font_dir: Path) -> None:
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    font_dir.mkdir(parents=True, exist_ok=True)
    for name in FONTS_WANTED:
        target = font_dir / name
        if not target.exists():
            shutil.copyfile(source, target)


def disable_ultralytics_integrations() -> None:
    """Switch off ultralytics' own MLflow/DVC/hub callbacks: leukoflow drives tracking itself."""
    from ultralytics import settings

    switches = ("mlflow", "dvc", "clearml", "comet", "neptune", "raytune", "tensorboard", "wandb", "sync")
    settings.update({key: False for key in switches if key in settings})
