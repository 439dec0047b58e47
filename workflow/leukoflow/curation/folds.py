"""Multilabel-stratified, group-aware cross-validation folds (docs/method.md §3).

Like the winner, one row per kept training image, rows sorted by NAME, and iterstrat's
`MultilabelStratifiedKFold(n_splits, shuffle=True, random_state=seed)` on a matrix of the 23
class indicators plus equal-width bins (`pd.cut`) of image area, mean box-area ratio
(100 * box area / image area), global pixel mean and global pixel std.

Deviations from the winner, on purpose:

* **One-hot bins.** iterstrat casts the label matrix to bool, so the winner's integer bin
  columns only acted as "bin != 0" flags (docs/method.md §3, §12.5). We pass one indicator column
  per bin, so every bin is balanced across folds. The folds therefore differ from his even on
  identical input.
* **Groups stay together.** Kept train images sharing a duplicate group_id (possible under
  dedup near_policy=keep_grouped) are stratified as one unit whose indicators are the max over
  its members; every member gets the unit's fold.
* An image whose boxes were all quarantined keeps its row (all class indicators 0) and a
  box-area ratio of 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

from leukoflow.constants import CLASSES
from leukoflow.tables import CURATED_BOXES, CURATED_IMAGES, FOLDS, read_table, schema_frame, write_table

BIN_KEYS = ("surface", "box_ratio", "mean", "std")


def _check_bins(bins: dict[str, int]) -> None:
    if set(bins) != set(BIN_KEYS) or any(int(v) < 1 for v in bins.values()):
        raise ValueError(f"folds bins must give a positive bin count for each of {BIN_KEYS}, got {bins}")


def _class_presence(train: pd.DataFrame, boxes: pd.DataFrame) -> np.ndarray:
    """(images, 23) 0/1 matrix: the image has at least one box of the class."""
    presence = np.zeros((len(train), len(CLASSES)), np.int8)
    row_of = pd.Series(np.arange(len(train)), index=train["name"])
    presence[row_of[boxes["name"]].to_numpy(), boxes["class_idx"].to_numpy()] = 1
    return presence


def _multilabel_strings(presence: np.ndarray) -> np.ndarray:
    """'|'-joined sorted class indices per row, spelled once per distinct class set."""
    codes = presence.astype(np.int64) @ (1 << np.arange(presence.shape[1], dtype=np.int64))
    distinct, inverse = np.unique(codes, return_inverse=True)
    spelled = np.array(
        ["|".join(str(k) for k in range(presence.shape[1]) if code >> k & 1) for code in distinct], dtype=object
    )
    return spelled[inverse.ravel()] if len(codes) else np.zeros(0, dtype=object)


def _per_image(images: pd.DataFrame, boxes: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Kept train images sorted by NAME with box count and covariates, and their class presence."""
    train = images[(images["split"] == "train") & images["keep"]].sort_values("name", kind="stable")
    train = train.reset_index(drop=True)
    on_train = boxes[boxes["name"].isin(train["name"])]
    sizes = train.set_index("name")[["width", "height"]]
    area = (on_train["x2"] - on_train["x1"]) * (on_train["y2"] - on_train["y1"])
    image_area = on_train["name"].map(sizes["width"] * sizes["height"])
    ratio = (100.0 * area / image_area).groupby(on_train["name"]).mean()
    presence = _class_presence(train, on_train)
    train["n_boxes"] = train["name"].map(on_train.groupby("name").size()).fillna(0).astype("int64")
    train["multilabel"] = pd.Series(_multilabel_strings(presence), dtype="str")
    train["surface"] = (train["width"] * train["height"]).astype(float)
    train["box_ratio"] = train["name"].map(ratio).fillna(0.0).astype(float)
    train["mean"] = train["pixel_mean"].astype(float)
    train["std"] = train["pixel_std"].astype(float)
    return train, presence


def _bin(values: pd.Series, n_bins: int) -> np.ndarray:
    if len(values) == 0:
        return np.zeros(0, np.int64)
    return pd.cut(values, n_bins, labels=False).astype("int64").to_numpy()


def _indicator_matrix(
    train: pd.DataFrame, presence: np.ndarray, bins: dict[str, int]
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """23 class indicators then one column per bin; also (kind, feature) names of the columns."""
    columns: list[np.ndarray] = [presence[:, k] for k in range(len(CLASSES))]
    names: list[tuple[str, str]] = [("class", code) for code in CLASSES]
    for key in BIN_KEYS:
        codes = train[f"{key}_bin"].to_numpy()
        for value in range(int(bins[key])):
            columns.append((codes == value).astype(np.int8))
            names.append(("bin", f"{key}_bin={value}"))
    matrix = np.stack(columns, axis=1) if len(train) else np.zeros((0, len(names)), np.int8)
    return matrix, names


def _stratification_units(train: pd.DataFrame) -> np.ndarray:
    """Unit code per row: members of one duplicate group share it; codes follow NAME order."""
    grouped = train["group_id"].to_numpy() >= 0
    keys = np.where(grouped, train["group_id"].astype(str).radd("g"), train["name"].radd("i"))
    codes, _ = pd.factorize(pd.Series(keys), sort=False)
    return codes


def _assign_folds(matrix: np.ndarray, units: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    unit_matrix = pd.DataFrame(matrix).groupby(units, sort=True).max().to_numpy()
    if len(unit_matrix) < n_folds:
        raise ValueError(f"folds: {len(unit_matrix)} stratification units cannot fill {n_folds} folds")
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    unit_fold = np.full(len(unit_matrix), -1, np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(unit_matrix), 1)), unit_matrix)):
        unit_fold[valid] = fold
    return unit_fold[units]


def _balance_table(matrix: np.ndarray, names: list[tuple[str, str]], fold: np.ndarray, n_folds: int) -> pd.DataFrame:
    counts = np.stack([matrix[fold == k].sum(axis=0) for k in range(n_folds)], axis=1).astype(np.int64)
    table = pd.DataFrame(names, columns=["kind", "feature"]).astype("str")
    table["total"] = counts.sum(axis=1)
    for k in range(n_folds):
        table[f"fold_{k}"] = counts[:, k]
    table["mean"] = table["total"] / n_folds
    with np.errstate(divide="ignore", invalid="ignore"):
        deviation = np.abs(counts - table["mean"].to_numpy()[:, None]) / table["mean"].to_numpy()[:, None]
    table["mean_relative_deviation"] = deviation.mean(axis=1)
    table["max_relative_deviation"] = deviation.max(axis=1)
    return table


def _max_deviation(balance: pd.DataFrame, kind: str, n_folds: int) -> float:
    rows = balance[(balance["kind"] == kind) & (balance["total"] >= n_folds)]
    return round(float(rows["max_relative_deviation"].max()), 6) if len(rows) else 0.0


def stratified_folds(
    images: pd.DataFrame, boxes: pd.DataFrame, *, n_folds: int, seed: int, bins: dict[str, int]
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Assign a validation fold to every kept training image.

    Args:
        images: CURATED_IMAGES frame (only split == "train" and keep rows are used).
        boxes: CURATED_BOXES frame (clipped boxes of the kept train images).
        n_folds: number of folds (>= 2).
        seed: random_state of MultilabelStratifiedKFold.
        bins: equal-width bin counts for keys surface, box_ratio, mean, std.

    Returns:
        (FOLDS frame sorted by NAME, balance table, summary dict). The balance table has one
        row per class and per bin: kind, feature, total, fold_<k> image counts,
        mean, mean_relative_deviation, max_relative_deviation.
    """
    if n_folds < 2:
        raise ValueError(f"folds n_folds must be >= 2, got {n_folds}")
    _check_bins(bins)
    started = time.perf_counter()
    train, presence = _per_image(images, boxes)
    for key in BIN_KEYS:
        train[f"{key}_bin"] = _bin(train[key], int(bins[key]))
    matrix, names = _indicator_matrix(train, presence, bins)
    train["fold"] = _assign_folds(matrix, _stratification_units(train), n_folds, seed)
    folds = schema_frame({c: train[c] for c in FOLDS.column_names}, FOLDS)
    balance = _balance_table(matrix, names, train["fold"].to_numpy(), n_folds)
    summary = {
        "n_folds": int(n_folds),
        "seed": int(seed),
        "bins": {k: int(bins[k]) for k in BIN_KEYS},
        "images": int(len(folds)),
        "images_per_fold": [int((folds["fold"] == k).sum()) for k in range(n_folds)],
        "boxes_per_fold": [int(folds.loc[folds["fold"] == k, "n_boxes"].sum()) for k in range(n_folds)],
        "groups_kept_together": int((folds.loc[folds["group_id"] >= 0, "group_id"].value_counts() > 1).sum()),
        "fold_max_class_deviation": _max_deviation(balance, "class", n_folds),
        "fold_max_bin_deviation": _max_deviation(balance, "bin", n_folds),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return folds, balance, summary


def plot_fold_balance(balance: pd.DataFrame, png_path: str | Path) -> None:
    """Bar chart of each fold's relative deviation from the mean count, classes and bins."""
    fold_columns = [c for c in balance.columns if c.startswith("fold_")]
    from matplotlib.figure import Figure  # here: code that only reads the folds needs no matplotlib

    figure = Figure(figsize=(14, 8), layout="constrained")
    for axis, kind in zip(figure.subplots(2, 1), ("class", "bin")):
        rows = balance[balance["kind"] == kind].reset_index(drop=True)
        width = 0.8 / max(len(fold_columns), 1)
        for k, column in enumerate(fold_columns):
            with np.errstate(divide="ignore", invalid="ignore"):
                deviation = 100.0 * (rows[column] / rows["mean"] - 1.0)
            axis.bar(np.arange(len(rows)) + k * width, deviation.fillna(0.0), width, label=column)
        axis.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, rows["feature"], rotation=60, ha="right")
        axis.axhline(0.0, color="black", linewidth=0.5)
        axis.set_ylabel("images vs. fold mean (%)")
        axis.set_title(f"fold balance per {kind}")
        axis.legend(fontsize="small", ncols=len(fold_columns))
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)


def make_folds(*, curated_images: str | Path, curated_boxes: str | Path, folds: str | Path, balance: str | Path,
               plot: str | Path, n_folds: int, seed: int, bins: dict[str, int]) -> dict:
    """Rule `make_folds`: curated images and boxes in; folds, the balance table and its plot out."""
    found, balance_table, summary = stratified_folds(
        read_table(curated_images, CURATED_IMAGES), read_table(curated_boxes, CURATED_BOXES),
        n_folds=n_folds, seed=seed, bins=bins,
    )
    write_table(found, folds, FOLDS)
    Path(balance).parent.mkdir(parents=True, exist_ok=True)
    balance_table.to_csv(balance, index=False)
    plot_fold_balance(balance_table, plot)
    return summary
