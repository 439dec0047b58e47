"""Box defects a detector can see beyond the original set: undersized, shifted and unannotated cells.

With `red_cell_box`, `oversized_box` and `unannotated_border_cell` they are the truth the noisy-box
search is scored on. Each takes its own base train image, like every other defect.
"""

from __future__ import annotations

import numpy as np

from leukoflow.synthetic.annotations import Dataset
from leukoflow.synthetic.render import clip_box

VISIBLE_KINDS: tuple[str, ...] = ("undersized_box", "shifted_box", "unannotated_cell")
UNDERSIZE_SCALE = (0.4, 0.6)  # side multiplier of an undersized box: IoU with the cell 0.16-0.36
SHIFT_SHARE = (0.45, 0.65)  # shift along x or y as a share of the box side: IoU 0.21-0.38


def inject_visible_defects(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]]) -> None:
    """undersized_box, shifted_box (first box of the image) and unannotated_cell (one box removed)."""
    for name in targets.get("undersized_box", []):
        row = data.rows_of(name)[0]
        scale = rng.uniform(*UNDERSIZE_SCALE)
        cx, cy, hw, hh = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2, (row.x2 - row.x1) / 2, (row.y2 - row.y1) / 2
        new = clip_box((cx - scale * hw, cy - scale * hh, cx + scale * hw, cy + scale * hh), *data.sizes[name])
        data.record("undersized_box", name, f"({row.x1},{row.y1},{row.x2},{row.y2}) -> {new}, scale {scale:.2f}",
                    row=row)
        row.x1, row.y1, row.x2, row.y2 = new
    for name in targets.get("shifted_box", []):
        row = data.rows_of(name)[0]
        width, height = data.sizes[name]
        share = rng.uniform(*SHIFT_SHARE)
        along_x = bool(rng.random() < 0.5)
        side = (row.x2 - row.x1) if along_x else (row.y2 - row.y1)
        room = (width - 1 - row.x2, row.x1) if along_x else (height - 1 - row.y2, row.y1)
        step = share * side * (1 if room[0] >= room[1] else -1)  # towards the side with more room
        dx, dy = (step, 0.0) if along_x else (0.0, step)
        new = clip_box((row.x1 + dx, row.y1 + dy, row.x2 + dx, row.y2 + dy), width, height)
        data.record("shifted_box", name, f"({row.x1},{row.y1},{row.x2},{row.y2}) -> {new}, "
                    f"{'x' if along_x else 'y'} by {share:.2f} of the side", row=row)
        row.x1, row.y1, row.x2, row.y2 = new
    for name in targets.get("unannotated_cell", []):
        rows = data.rows_of(name)
        width, height = data.sizes[name]
        margin = [min(r.x1, r.y1, width - 1 - r.x2, height - 1 - r.y2) for r in rows]
        dropped = rows[int(np.argmax(margin))]  # the most fully visible cell loses its annotation
        data.train.remove(dropped)
        data.train_by_name[name].remove(dropped)
        data.record("unannotated_cell", name, f"visible box ({dropped.x1},{dropped.y1},{dropped.x2},{dropped.y2}) "
                    f"{dropped.label} not annotated")
