"""Audit galleries of the noisy-box search: per family, the strongest flags with their evidence."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

XYXY = ["x1", "y1", "x2", "y2"]


def write_galleries(flags: pd.DataFrame, images: pd.DataFrame, out_dir: str | Path, families: Iterable[str], *,
                    boxes: pd.DataFrame, tiles: int, tile_px: int) -> list[str]:
    """One PNG per family: thumbnails of the strongest flags (annotations green, flagged box red,
    evidence written in the corner)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path_of = images.set_index("name")["path"]
    written = []
    for family in families:
        chosen = flags[flags["reason"] == family].sort_values(["evidence", "name"], ascending=[False, True],
                                                              kind="stable").head(tiles)
        thumbnails = [_thumbnail(path_of[row.name], boxes[boxes["name"] == row.name][XYXY].to_numpy(float),
                                 np.array([row.x1, row.y1, row.x2, row.y2], float), tile_px,
                                 f"{row.evidence:.2f}")
                      for row in chosen.itertuples(index=False)]
        target = out_dir / f"{family}.png"
        _grid(thumbnails, tile_px).save(target)
        written.append(str(target))
    return written


def _thumbnail(path: str, annotations: np.ndarray, flagged: np.ndarray, tile: int, caption: str) -> Image.Image:
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, image.width // 100)
    for box in annotations:
        draw.rectangle(box.tolist(), outline=(0, 160, 0), width=width)
    if np.isfinite(flagged).all():
        draw.rectangle(flagged.tolist(), outline=(220, 0, 0), width=width)
    image.thumbnail((tile, tile))
    ImageDraw.Draw(image).text((2, 2), caption, fill=(0, 0, 0))
    return image


def _grid(thumbnails: list[Image.Image], tile: int, columns: int = 6) -> Image.Image:
    """Tiles on a white sheet; a single blank tile when there is nothing to show."""
    rows = max(1, -(-len(thumbnails) // columns))
    sheet = Image.new("RGB", (tile * min(columns, max(len(thumbnails), 1)), tile * rows), "white")
    for index, image in enumerate(thumbnails):
        sheet.paste(image, ((index % columns) * tile, (index // columns) * tile))
    return sheet
