"""Realistic near duplicates and hard negatives: the truth the two-stage duplicate search is scored on.

The hash-bounded `near_duplicate` copies (defects.py) stay within `near_duplicate_max_distance`
pHash bits by construction. Real repeated fields of view are not so kind (BCCD's 00037/00038 is a
moved, refocused retake at distance 4), so three more copy kinds imitate retakes and re-exports,
each also re-encoded at a lower JPEG quality:

* `shifted_duplicate`: the field of view moved by SHIFT_SHARE of each side (edge strip mirrored);
* `refocused_duplicate`: Gaussian defocus blur plus a shift of up to REFOCUS_SHIFT_PX;
* `recoloured_duplicate`: per-channel gain and gamma (another stain batch, scanner or white balance).

Their pHash distance to the source is recorded, not bounded. The hard negatives (`similar_smear`)
are other fields of view drawn from the source's plan (same classes, cell sizes, image size and,
for single cells, the same centred layout) under fresh render streams; of HARD_NEGATIVE_DRAWS such
draws the one whose pHash is closest to the source's is kept, so they are as close as distinct
smears get. A duplicate search must keep them apart.
"""

from __future__ import annotations

import dataclasses
import io

import cv2
import imagehash
import numpy as np
from PIL import Image

from leukoflow.synthetic.annotations import Dataset
from leukoflow.synthetic.defects import phash_distance
from leukoflow.synthetic.morphology import SmearStyle
from leukoflow.synthetic.plan import Box, ImagePlan
from leukoflow.synthetic.render import clip_box, encode_jpeg, render_image
from leukoflow.synthetic.textures import build_textures

RETAKE_KINDS: tuple[str, ...] = ("shifted_duplicate", "refocused_duplicate", "recoloured_duplicate")
HARD_NEGATIVE_KIND = "similar_smear"
SHIFT_SHARE = (0.01, 0.02)  # share of the side the field of view moves, per axis (4-7 px at 360 px)
REFOCUS_SIGMA_PX = (1.0, 2.5)
REFOCUS_SHIFT_PX = 3
COLOUR_GAIN = (0.9, 1.1)  # per channel
COLOUR_GAMMA = (0.85, 1.15)
QUALITY_DROP = (5, 25)  # JPEG quality lost by the re-export
HARD_NEGATIVE_DRAWS = 16  # renders per hard negative; the one closest in pHash to its source is kept


def _shift(rgb: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The field of view moved by (dx, dy) px: content moves by (-dx, -dy), the strip is mirrored."""
    matrix = np.float32([[1, 0, -dx], [0, 1, -dy]])
    return cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT_101)


def _signed(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high) * rng.choice([-1, 1]))


def retake(rgb: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int, int, str]:
    """(new pixels, dx, dy, detail) of one retake of `kind`; boxes move by (-dx, -dy)."""
    height, width = rgb.shape[:2]
    if kind == "shifted_duplicate":
        dx, dy = int(round(_signed(rng, *SHIFT_SHARE) * width)), int(round(_signed(rng, *SHIFT_SHARE) * height))
        return _shift(rgb, dx, dy), dx, dy, f"field of view moved by ({dx}, {dy}) px"
    if kind == "refocused_duplicate":
        sigma = float(rng.uniform(*REFOCUS_SIGMA_PX))
        dx, dy = (int(v) for v in rng.integers(-REFOCUS_SHIFT_PX, REFOCUS_SHIFT_PX + 1, size=2))
        blurred = cv2.GaussianBlur(_shift(rgb, dx, dy), (0, 0), sigma)
        return blurred, dx, dy, f"defocus blur sigma {sigma:.2f} px, moved by ({dx}, {dy}) px"
    gain = rng.uniform(*COLOUR_GAIN, size=3)
    gamma = float(rng.uniform(*COLOUR_GAMMA))
    recoloured = 255.0 * (rgb.astype(np.float64) / 255.0) ** gamma * gain
    detail = f"channel gains {np.round(gain, 3).tolist()}, gamma {gamma:.3f}"
    return np.clip(np.round(recoloured), 0, 255).astype(np.uint8), 0, 0, detail


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _moved(box: tuple[int, int, int, int], dx: int, dy: int, width: int, height: int) -> Box | None:
    moved = clip_box((box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy), width, height)
    return moved if moved[2] > moved[0] and moved[3] > moved[1] else None


def inject_retakes(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                   copy_names: dict[str, list[str]], jpeg_quality: int) -> None:
    """shifted_, refocused_ and recoloured_duplicate copies of base train images (train split)."""
    for kind in RETAKE_KINDS:
        for source, copy in zip(targets.get(kind, []), copy_names.get(kind, [])):
            with Image.open(data.images_dir / source) as image:
                rgb = np.asarray(image.convert("RGB"))
            pixels, dx, dy, detail = retake(rgb, kind, rng)
            quality = max(1, jpeg_quality - int(rng.integers(QUALITY_DROP[0], QUALITY_DROP[1] + 1)))
            (data.images_dir / copy).write_bytes(_jpeg(pixels, quality))
            width, height = data.sizes[copy] = data.sizes[source]
            for row in data.rows_of(source):
                box = _moved((row.x1, row.y1, row.x2, row.y2), dx, dy, width, height)
                if box is not None:
                    data.add_row("train", copy, box, row.label)
            distance = phash_distance(data.images_dir / source, data.images_dir / copy)
            data.record(kind, copy, f"{detail}; JPEG quality {quality}; phash distance {distance}", source=source)


def _closest_draw(plan: ImagePlan, source: Image.Image, seed: int, textures, style: SmearStyle,
                  first_index: int) -> tuple[np.ndarray, object, int]:
    """Of HARD_NEGATIVE_DRAWS renders of `plan` under fresh render streams, the one whose pHash is
    closest to the source's: (pixels, annotation, pHash distance)."""
    target = imagehash.phash(source)
    best = None
    for draw in range(HARD_NEGATIVE_DRAWS):
        rgb, rendered = render_image(dataclasses.replace(plan, index=first_index + draw), seed, textures, style)
        distance = int(imagehash.phash(Image.fromarray(rgb)) - target)
        if best is None or distance < best[2]:
            best = (rgb, rendered, distance)
    return best


def render_similar_smears(data: Dataset, plans: list[ImagePlan], sources: list[str], copies: list[str], *,
                          seed: int, jpeg_quality: int, style: SmearStyle, first_index: int) -> None:
    """similar_smear hard negatives (train split): rendered here, in this process, with their boxes.

    Render streams from `first_index` on are free (the base images use 0..n_base-1).
    """
    if not sources:
        return
    by_name = {plan.name: plan for plan in plans}
    textures = build_textures(seed, style)
    for number, (source, copy) in enumerate(zip(sources, copies)):
        plan = dataclasses.replace(by_name[source], name=copy)
        with Image.open(data.images_dir / source) as image:
            original = image.convert("RGB")
        rgb, rendered, _ = _closest_draw(plan, original, seed, textures, style,
                                         first_index + number * HARD_NEGATIVE_DRAWS)
        (data.images_dir / copy).write_bytes(encode_jpeg(rgb, jpeg_quality))
        data.sizes[copy] = (plan.width, plan.height)
        for cell, box in zip(plan.cells, rendered.boxes):
            data.add_row("train", copy, box, cell.code)
        distance = phash_distance(data.images_dir / source, data.images_dir / copy)
        data.record(HARD_NEGATIVE_KIND, copy, f"same plan (classes, sizes, layout), another field; closest pHash of "
                    f"{HARD_NEGATIVE_DRAWS} draws; phash distance {distance}", source=source)
