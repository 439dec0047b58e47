"""Background synthesis: the cell is painted out, nothing else changes, the result is seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from leukoflow.detection import backgrounds

from leukoflow import tables
from tests.test_detection import NUCLEUS_RGB, WHITE_CELL_RGB, draw_smear

REMOVE = {"expand": 16, "fill_dilation": 24, "cell_dilation": 8, "background_threshold": 150,
          "noise_fraction": 0.1, "noise_amplitude": 8}


@pytest.fixture(scope="module")
def smear():
    image, boxes = draw_smear(np.random.default_rng(3), 160, 1)
    return np.asarray(image), boxes[0]


def is_white_cell(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the drawn white cell (cytoplasm or nucleus colour, within JPEG-free tolerance)."""
    return np.isin(rgb.reshape(-1, 3).view([("", rgb.dtype)] * 3),
                   np.array([WHITE_CELL_RGB, NUCLEUS_RGB], np.uint8).view([("", np.uint8)] * 3)).reshape(rgb.shape[:2])


def test_mask_covers_the_cell_and_nothing_else_changes(smear):
    rgb, box = smear
    painted, mask = backgrounds.remove_cell(rgb, box, np.random.default_rng(0), **REMOVE)
    assert painted.shape == rgb.shape and painted.dtype == np.uint8
    cell = is_white_cell(rgb)
    assert cell.any() and mask[cell].all()  # every white-cell pixel is repainted
    assert not is_white_cell(painted).any()
    np.testing.assert_array_equal(painted[~mask], rgb[~mask])
    # repainted with the background colour (the generator's pale background) plus sparse noise
    assert np.abs(np.median(painted[mask], axis=0) - np.median(rgb[~mask], axis=0)).max() <= 12


def test_same_seed_same_image_other_seed_other_noise(smear):
    rgb, box = smear
    first, _ = backgrounds.remove_cell(rgb, box, np.random.default_rng(5), **REMOVE)
    again, _ = backgrounds.remove_cell(rgb, box, np.random.default_rng(5), **REMOVE)
    other, _ = backgrounds.remove_cell(rgb, box, np.random.default_rng(6), **REMOVE)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_box_without_dark_pixels_removes_nothing():
    flat = np.full((64, 64, 3), 230, np.uint8)
    flat[:4, :4] = 20  # something dark far from the box so Otsu has two classes
    painted, mask = backgrounds.remove_cell(flat, np.array([40, 40, 50, 50]), np.random.default_rng(0),
                                            **{**REMOVE, "expand": 2})
    assert not mask.any()
    np.testing.assert_array_equal(painted, flat)


def fitted_frame(rows):
    """rows: (name, fold, score, padded)."""
    frame = pd.DataFrame(rows, columns=["name", "fold", "score", "padded"])
    return frame.assign(detector="det1", rank=0, x1=10.0, y1=10.0, x2=50.0, y2=50.0)[tables.OOF_BOXES.column_names]


def test_select_sources_single_confident_cells_best_first():
    fitted = fitted_frame([("a.jpg", 0, 0.9, False), ("b.jpg", 1, 0.95, False), ("c.jpg", 1, 0.99, True),
                           ("d.jpg", 0, 0.3, False), ("e.jpg", 2, 0.97, False), ("e.jpg", 2, 0.97, False)])
    folds = pd.DataFrame({"name": list("abcde"), "fold": [0, 1, 1, 0, 2], "n_boxes": [1, 1, 1, 1, 2]})
    folds["name"] += ".jpg"
    sources = backgrounds.select_sources(fitted, folds, count=5, min_score=0.5)
    # c is a padding box, d is not confident, e holds two cells
    assert sources["name"].tolist() == ["b.jpg", "a.jpg"] and sources["fold"].tolist() == [1, 0]
    assert len(backgrounds.select_sources(fitted, folds, count=1, min_score=0.5)) == 1


def test_paint_backgrounds_inherits_folds_and_writes_same_size_jpegs(smear, tmp_path):
    rgb, box = smear
    Image.fromarray(rgb).save(tmp_path / "src.jpg", quality=95)
    images = pd.DataFrame({"name": ["src.jpg"], "path": [str(tmp_path / "src.jpg")]})
    sources = pd.DataFrame({"name": ["src.jpg"], "split": ["train"], "fold": [3], "x1": [box[0]], "y1": [box[1]],
                            "x2": [box[2]], "y2": [box[3]], "score": [0.9]})
    table, summary = backgrounds.paint_backgrounds(sources, images, tmp_path / "bg", seed=1, n_folds=4,
                                                   jpeg_quality=90, **REMOVE)
    tables.validate(table, tables.BACKGROUNDS)
    assert table["name"].tolist() == ["src_background.jpg"] and table["fold"].tolist() == [3]
    assert Image.open(table["path"].item()).size == (rgb.shape[1], rgb.shape[0])
    assert summary["n_backgrounds"] == 1
    backgrounds.write_gallery(table, images, tmp_path / "gallery.png", max_pairs=4, tile=32)
    assert Image.open(tmp_path / "gallery.png").size == (64, 32)


def test_test_sources_get_stratified_folds():
    sources = pd.DataFrame({"split": ["train"] + ["test"] * 8, "fold": [2] + [-1] * 8})
    stats = pd.DataFrame({"mean": np.linspace(100, 200, 9), "std": np.linspace(10, 30, 9)})
    folds = backgrounds.assign_test_folds(sources, stats, n_folds=4, seed=0)
    assert folds.iloc[0] == 2 and sorted(folds.iloc[1:].value_counts().tolist()) == [2, 2, 2, 2]


def test_too_few_test_sources_go_round_robin():
    sources = pd.DataFrame({"split": ["test"] * 3, "fold": [-1] * 3})
    stats = pd.DataFrame({"mean": [100.0, 150.0, 200.0], "std": [10.0, 20.0, 30.0]})
    assert sorted(backgrounds.assign_test_folds(sources, stats, n_folds=4, seed=0).tolist()) == [0, 1, 2]
