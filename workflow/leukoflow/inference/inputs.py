"""What `leukoflow predict` reads: image files, folders (recursive) and globs, keyed by relative path.

An image's id (the NAME column) is its path relative to the root it was found under: the folder
given, the fixed part of a glob, or just the file name for a file given directly. Ids are
therefore unique inside one folder tree (per-patient folders of `0001.jpg` are fine); two roots
that yield the same id are an error naming both files.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukoflow import images

LOGGER = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_COLUMNS = ["name", "source", "path", "split", "keep", "width", "height", "reason"]
GLOB_CHARACTERS = "*?["


def collect_images(inputs: Sequence[str | Path]) -> dict[str, str]:
    """Image id -> path of every input, in order (files as given, folders and globs sorted).

    Raises:
        FileNotFoundError: an input does not exist, or a folder or glob holds no image.
        ValueError: two inputs give the same id for different files.
    """
    found: dict[str, str] = {}
    for entry in map(str, inputs):
        for image_id, path in _expand(entry):
            if image_id in found and Path(found[image_id]).resolve() != Path(path).resolve():
                raise ValueError(f"predict: two images would have the id {image_id!r} ({found[image_id]}, {path}); "
                                 "give their common parent folder instead")
            found.setdefault(image_id, path)
    return found


def _expand(entry: str) -> list[tuple[str, str]]:
    if any(character in entry for character in GLOB_CHARACTERS) and not Path(entry).exists():
        root = _glob_root(entry)
        files = sorted(Path(p) for p in glob.glob(entry, recursive=True) if _is_image(Path(p)))
        if not files:
            raise FileNotFoundError(f"predict: the pattern {entry} matches no image ({', '.join(IMAGE_SUFFIXES)})")
        return [(_relative(p, root), str(p)) for p in files]
    path = Path(entry)
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if _is_image(p)), key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise FileNotFoundError(f"predict: folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)}), "
                                    "also in its subfolders")
        return [(_relative(p, path), str(p)) for p in files]
    if path.is_file():
        return [(path.name, str(path))]
    raise FileNotFoundError(f"predict: {path} does not exist")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _glob_root(pattern: str) -> Path:
    """The longest leading part of the pattern without wildcards."""
    fixed = []
    for part in Path(pattern).parts:
        if any(character in part for character in GLOB_CHARACTERS):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_expected_counts(path: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """INGEST_TEST-like rows (row, trustii_id, name) of the given image ids, in test.csv order.

    Raises:
        ValueError: the CSV lacks trustii_id/NAME, or an image has no row in it (the file is named).
    """
    from leukoflow.metric import read_csv_table

    frame = read_csv_table(path, role="expected counts")
    missing = [c for c in ("trustii_id", "NAME") if c not in frame.columns]
    if missing:
        raise ValueError(f"predict: expected counts {path} lacks column(s) {missing}")
    listed = set(frame["NAME"].astype(str))
    absent = [name for name in names if name not in listed]
    if absent:
        raise ValueError(f"predict: {len(absent)} image(s) have no row in {path}, e.g. {absent[0]!r}")
    try:
        ids = frame["trustii_id"].astype("int64")
    except (TypeError, ValueError) as error:
        raise ValueError(f"predict: expected counts {path}: trustii_id must be integers ({error})") from error
    frame = frame.reset_index(drop=True)
    rows = pd.DataFrame({"row": np.arange(len(frame), dtype="int64"), "trustii_id": ids.to_numpy(),
                         "name": frame["NAME"].astype(str).astype("str"), "status": "ok", "reason": ""})
    return rows[rows["name"].isin(set(names))].reset_index(drop=True)


def prepare_images(paths: Mapping[str, str], work_dir: str | Path) -> pd.DataFrame:
    """name, source, path, split, keep, width, height, reason of every image, decoded once as ingest does.

    A file that decodes only as truncated, or not as 8-bit RGB, gets an RGB PNG working copy in
    `work_dir` at its id's relative path (ids are unique, stems are not), which every later step
    reads; a file that cannot be decoded (zero bytes, not an image) is kept out with the reason
    "unreadable image: ...".
    """
    rows = []
    for name, source in paths.items():
        row = {"name": name, "source": source, "path": source, "split": "test", "keep": True, "width": 0,
               "height": 0, "reason": ""}
        try:
            if Path(source).stat().st_size == 0:
                raise ValueError("the file is empty (0 bytes)")
            decoded = images.decode_rgb(Path(source).read_bytes())
            row["width"], row["height"] = decoded.image.size
            if decoded.truncation or decoded.depth_scaling or decoded.stored_mode != "RGB":
                copy = Path(work_dir) / f"{name}.png"
                copy.parent.mkdir(parents=True, exist_ok=True)
                decoded.image.save(copy, format="PNG")
                row["path"] = str(copy)
                repairs = decoded.truncation or decoded.depth_scaling or f"{decoded.stored_mode} converted to RGB"
                row["reason"] = "repaired: " + repairs
        except Exception as error:  # NOTE: decoders raise many types (and plugins add more) for a bad file
            LOGGER.warning("predict: unreadable image %s: %s", source, error)
            row.update(keep=False, width=0, height=0, reason=f"unreadable image: {_plain_reason(error)}")
        rows.append(row)
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)


def _plain_reason(error: Exception) -> str:
    """The decoder's message, without an import failure of an optional plugin standing in for it."""
    text = str(error)
    if isinstance(error, ImportError) or "No module named" in text:
        return "not a decodable image file"
    return text or type(error).__name__
