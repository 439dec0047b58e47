"""Injecting the defects into a rendered dataset: bad boxes and labels, duplicates, broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from leukoflow.constants import CLASSES
from leukoflow.synthetic.annotations import Dataset
from leukoflow.synthetic.morphology import CONFUSABLE
from leukoflow.synthetic.plan import RenderedImage
from leukoflow.synthetic.render import clip_box

NEAR_DUPLICATE_VARIANTS: tuple[str, ...] = ("reencode", "resize", "crop")
UNREADABLE_BYTES = b"<!DOCTYPE html>\n<html><body><h1>503 Service Unavailable</h1></body></html>\n"
# Defect parameters (the kinds and their counts are the caller's; these set how each looks).
CONFUSABLE_LABEL_SHARE = 0.7  # wrong labels taken from morphology.CONFUSABLE, the rest uniform
OUT_OF_IMAGE_PX = (1, 20)  # how far a coordinate is pushed past the border (docs/method.md §1.3: negative x1/y1)
OUT_OF_IMAGE_COORDINATE_P = {"x1": 0.35, "y1": 0.35, "x2": 0.15, "y2": 0.15}
OVERSIZE_SCALE = (2.0, 3.0)  # side multiplier of an oversized box (before clipping)
TRUNCATE_KEEP = (0.6, 0.85)  # share of the JPEG bytes a truncated file keeps
NEAR_QUALITY_DROP = (8, 25)  # JPEG quality lost by a re-encoded near duplicate
NEAR_RESIZE_PX = (2, 6)  # px a resized near duplicate gains or loses per side length
NEAR_CROP_PX = 4  # at most this many px cut from each edge of a cropped near duplicate


def _other_class(rng: np.random.Generator, code: str) -> str:
    """A different class, usually one a careless annotator would confuse with `code`."""
    if rng.random() < CONFUSABLE_LABEL_SHARE:
        return str(rng.choice(CONFUSABLE[code]))
    return str(rng.choice([c for c in CLASSES if c != code]))


def inject_box_defects(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                       rendered: dict[str, RenderedImage]) -> None:
    """out_of_image_box, oversized_box, wrong_label, red_cell_box, unannotated_border_cell."""
    for name in targets["out_of_image_box"]:
        rows = data.rows_of(name)
        row = rows[int(rng.integers(len(rows)))]
        width, height = data.sizes[name]
        coordinate = str(rng.choice(list(OUT_OF_IMAGE_COORDINATE_P), p=list(OUT_OF_IMAGE_COORDINATE_P.values())))
        beyond = int(rng.integers(OUT_OF_IMAGE_PX[0], OUT_OF_IMAGE_PX[1] + 1))
        value = -beyond if coordinate in ("x1", "y1") else (width if coordinate == "x2" else height) + beyond
        data.record("out_of_image_box", name, f"{coordinate} {getattr(row, coordinate)} -> {value} (image {width}x{height})",
                    row=row)
        setattr(row, coordinate, value)
    for name in targets["oversized_box"]:
        row = data.rows_of(name)[0]
        width, height = data.sizes[name]
        scale = rng.uniform(*OVERSIZE_SCALE)
        cx, cy, hw, hh = (row.x1 + row.x2) / 2, (row.y1 + row.y2) / 2, (row.x2 - row.x1) / 2, (row.y2 - row.y1) / 2
        new = clip_box((cx - scale * hw, cy - scale * hh, cx + scale * hw, cy + scale * hh), width, height)
        data.record("oversized_box", name, f"({row.x1},{row.y1},{row.x2},{row.y2}) -> {new}, scale {scale:.2f}",
                    row=row)
        row.x1, row.y1, row.x2, row.y2 = new
    for name in targets["wrong_label"]:
        row = data.rows_of(name)[0]
        new_label = _other_class(rng, row.label)
        data.record("wrong_label", name, f"{row.label} -> {new_label}", row=row)
        row.label = new_label
    for name in targets["red_cell_box"]:
        label = data.rows_of(name)[0].label
        row = data.add_row("train", name, rendered[name].red_cell_box, label)
        data.record("red_cell_box", name, f"red cell {rendered[name].red_cell_box} labelled {label}", row=row)
    for name in targets["unannotated_border_cell"]:
        data.record("unannotated_border_cell", name, f"visible box {rendered[name].border_cell_box} not annotated")


def _near_duplicate(source: Path, target: Path, variant: str, rng: np.random.Generator, jpeg_quality: int
                    ) -> tuple[str, object]:
    """Write a near copy of `source`; return its detail and a function mapping source boxes."""
    image = Image.open(source).convert("RGB")
    width, height = image.size
    if variant == "reencode":
        quality = max(1, jpeg_quality - int(rng.integers(NEAR_QUALITY_DROP[0], NEAR_QUALITY_DROP[1] + 1)))
        image.save(target, format="JPEG", quality=quality)
        return f"reencode quality {jpeg_quality} -> {quality}", lambda box: box
    if variant == "resize":
        new_w, new_h = (side + int(rng.choice([-1, 1])) * int(rng.integers(NEAR_RESIZE_PX[0], NEAR_RESIZE_PX[1] + 1))
                        for side in (width, height))
        image.resize((new_w, new_h), Image.Resampling.BILINEAR).save(target, format="JPEG", quality=jpeg_quality)
        sx, sy = new_w / width, new_h / height
        return (f"resize {width}x{height} -> {new_w}x{new_h}",
                lambda box: clip_box((box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy), new_w, new_h))
    left, top, right, bottom = (int(v) for v in rng.integers(0, NEAR_CROP_PX + 1, size=4))
    left = max(left, 1)
    image.crop((left, top, width - right, height - bottom)).save(target, format="JPEG", quality=jpeg_quality)
    new_w, new_h = width - left - right, height - top - bottom
    return (f"crop left {left} top {top} right {right} bottom {bottom}",
            lambda box: clip_box((box[0] - left, box[1] - top, box[2] - left, box[3] - top), new_w, new_h))


def phash_distance(first: Path, second: Path) -> int:
    """Hamming distance of the 64-bit imagehash pHashes of two image files."""
    with Image.open(first) as a, Image.open(second) as b:
        return int(imagehash.phash(a.convert("RGB")) - imagehash.phash(b.convert("RGB")))


def inject_duplicates(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                      copy_names: dict[str, list[str]], jpeg_quality: int, near_max_distance: int) -> None:
    """exact_duplicate, conflicting_duplicate, near_duplicate (train) and train_test_duplicate (test)."""
    for kind in ("exact_duplicate", "conflicting_duplicate", "train_test_duplicate"):
        for source, copy in zip(targets[kind], copy_names[kind]):
            shutil.copyfile(data.images_dir / source, data.images_dir / copy)
            data.sizes[copy] = data.sizes[source]
            split = "test" if kind == "train_test_duplicate" else "train"
            changes = []
            for row in data.rows_of(source):
                label = _other_class(rng, row.label) if kind == "conflicting_duplicate" else row.label
                changes.append(f"{row.label} -> {label}")
                data.add_row(split, copy, (row.x1, row.y1, row.x2, row.y2), label)
            detail = "byte-identical copy" + (f", labels {'; '.join(changes)}" if kind == "conflicting_duplicate" else "")
            data.record(kind, copy, detail, source=source)
    first_variant = int(rng.integers(len(NEAR_DUPLICATE_VARIANTS)))
    for i, (source, copy) in enumerate(zip(targets["near_duplicate"], copy_names["near_duplicate"])):
        variant = NEAR_DUPLICATE_VARIANTS[(first_variant + i) % len(NEAR_DUPLICATE_VARIANTS)]
        source_path, copy_path = data.images_dir / source, data.images_dir / copy
        detail, mapping = _near_duplicate(source_path, copy_path, variant, rng, jpeg_quality)
        distance = phash_distance(source_path, copy_path)
        if distance > near_max_distance:  # rare: fall back to the gentlest change
            detail, mapping = _near_duplicate(source_path, copy_path, "reencode", rng, jpeg_quality)
            distance = phash_distance(source_path, copy_path)
        with Image.open(copy_path) as image:
            data.sizes[copy] = image.size
        for row in data.rows_of(source):
            data.add_row("train", copy, mapping((row.x1, row.y1, row.x2, row.y2)), row.label)
        data.record("near_duplicate", copy, f"{detail}; phash distance {distance}", source=source)


def inject_file_defects(data: Dataset, rng: np.random.Generator, targets: dict[str, list[str]],
                        jpeg_quality: int) -> None:
    """truncated_jpeg, unreadable_file, greyscale_image: rewrite base train files in place."""
    for name in targets["truncated_jpeg"]:
        path = data.images_dir / name
        payload = path.read_bytes()
        kept = int(len(payload) * rng.uniform(*TRUNCATE_KEEP))
        path.write_bytes(payload[:kept])
        data.record("truncated_jpeg", name, f"kept {kept} of {len(payload)} bytes")
    for name in targets["unreadable_file"]:
        (data.images_dir / name).write_bytes(UNREADABLE_BYTES)
        data.record("unreadable_file", name, "HTML error page instead of JPEG data")
    for name in targets["greyscale_image"]:
        path = data.images_dir / name
        with Image.open(path) as image:
            grey = image.convert("L")
        grey.save(path, format="JPEG", quality=jpeg_quality)
        data.record("greyscale_image", name, "re-encoded as single-channel (mode L) JPEG")

