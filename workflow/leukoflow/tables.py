"""Every table passed between stages, defined in one place and validated on write and read.

This module is long by design: the one place for every schema (a reader finds each table's
columns here, not spread over the stages); the functions that read, write and check them are a
small part of it.

A schema is an ordered list of columns, each with a pandas dtype kind and a description; only
float columns may hold a missing value (NaN = not measured), text columns use "" for none.
`write_table` refuses a frame whose columns or dtypes differ from its schema, so a stage
cannot silently change the contract its consumers rely on. `python -m leukoflow.engine.docs`
renders these definitions into docs/tables.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # one of: str, int, float, bool
    description: str


@dataclass(frozen=True)
class Schema:
    name: str
    path_pattern: str
    description: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def without(self, *names: str) -> Schema:
        """The same table less some columns (to read a wide table without them)."""
        unknown = set(names) - set(self.column_names)
        if unknown:
            raise SchemaError(f"table {self.name}: no columns {sorted(unknown)}")
        return Schema(self.name, self.path_pattern, self.description,
                      tuple(c for c in self.columns if c.name not in names))


_STATUS = Column("status", "str", "ok | repaired | quarantined")
_REASON = Column("reason", "str", "';'-joined reason codes of the repair or quarantine; empty when ok")

SCHEMAS: dict[str, Schema] = {}


def _register(schema: Schema) -> Schema:
    SCHEMAS[schema.name] = schema
    return schema


INGEST_IMAGES = _register(Schema(
    "ingest_images", "results/ingest/images.parquet",
    "One row per image referenced by train.csv or test.csv, as decoded once by ingest.",
    (
        Column("name", "str", "NAME as in the challenge CSVs (plain file name)"),
        Column("split", "str", "train | test"),
        Column("path", "str", "image the later stages read: the input file, or the repaired working copy"),
        _STATUS,
        _REASON,
        Column("width", "int", "the file's width in px (0 when quarantined)"),
        Column("height", "int", "the file's height in px (0 when quarantined)"),
        Column("channels", "int", "channels of the file as stored (1 grey, 3 RGB, 4 CMYK/RGBA)"),
        Column("mode", "str", "PIL mode of the file as stored"),
        Column("file_sha256", "str", "SHA-256 of the input file bytes"),
        Column("pixel_mean", "float", "mean over all RGB pixels and channels (0-255) of ingest's decode: JPEGs at 1/ingest.decode_reduction of their size"),
        Column("pixel_std", "float", "standard deviation over all RGB pixels and channels of that decode"),
        Column("phash", "str", "64-bit imagehash pHash of that decode as 16 hex digits (empty when quarantined; docs/method.md, Perceptual hash)"),
        Column("thumbnail", "str", "32x32 grey thumbnail, row-major bytes as hex (empty when quarantined); curation compares candidate duplicates with it"),
    ),
))

INGEST_BOXES = _register(Schema(
    "ingest_boxes", "results/ingest/boxes.parquet",
    "One row per train.csv row (one annotated white cell), coordinates as given.",
    (
        Column("row", "int", "0-based data row of train.csv (file line = row + 2)"),
        Column("name", "str", "NAME of the image"),
        Column("x1", "float", "left, px, as given"),
        Column("y1", "float", "top, px, as given"),
        Column("x2", "float", "right, px, as given"),
        Column("y2", "float", "bottom, px, as given"),
        Column("label", "str", "class code (constants.CLASSES)"),
        Column("class_idx", "int", "index of the class code (-1 when quarantined for an unknown code)"),
        _STATUS,
        _REASON,
    ),
))

INGEST_TEST = _register(Schema(
    "ingest_test", "results/ingest/test.parquet",
    "One row per test.csv row (one expected cell).",
    (
        Column("row", "int", "0-based data row of test.csv"),
        Column("trustii_id", "int", "submission id of the expected cell"),
        Column("name", "str", "NAME of the image"),
        _STATUS,
        _REASON,
    ),
))

LEDGER = _register(Schema(
    "ledger", "results/<stage>/ledger.csv",
    "Data-quality ledger: one row per input row or image that a stage repaired, removed or quarantined.",
    (
        Column("stage", "str", "ingest | deduplicate | repair_boxes"),
        Column("table", "str", "train.csv | test.csv | images"),
        Column("row", "int", "0-based data row in that table (-1 for an image without a row)"),
        Column("name", "str", "NAME of the image concerned"),
        Column("field", "str", "column or property at fault"),
        Column("action", "str", "repaired | removed | quarantined"),
        Column("reason", "str", "reason code"),
        Column("detail", "str", "human-readable detail (values seen, exception text)"),
    ),
))

DUPLICATE_GROUPS = _register(Schema(
    "duplicate_groups", "results/curation/duplicate_groups.parquet",
    "Members of every exact or near-duplicate group of images (train and test together).",
    (
        Column("group_id", "int", "0-based id, groups ordered by their smallest member name"),
        Column("name", "str", "NAME of the member"),
        Column("split", "str", "train | test"),
        Column("kind", "str", "exact (pHash distance 0 across the group) | near (candidate at distance <= dedup.max_distance, confirmed by thumbnail similarity)"),
        Column("hash_distance", "int", "pHash distance of the member's closest link in the group"),
        Column("similarity", "float", "thumbnail similarity of the member's best link in the group (dedup.min_similarity or more for near links)"),
        Column("role", "str", "survivor | removed | test_member | conflict_removed"),
        Column("reason", "str", "why the role was given"),
        Column("labels", "str", "'|'-joined sorted class codes of the member's boxes (empty for test)"),
    ),
))

CURATED_IMAGES = _register(Schema(
    "curated_images", "results/curation/images.parquet",
    "Usable images after de-duplication, with the marks of the duplicate search.",
    (
        Column("name", "str", "NAME of the image"),
        Column("split", "str", "train | test"),
        Column("path", "str", "image file to read"),
        Column("width", "int", "decoded width in px"),
        Column("height", "int", "decoded height in px"),
        Column("pixel_mean", "float", "global pixel mean"),
        Column("pixel_std", "float", "global pixel std"),
        Column("group_id", "int", "duplicate group (-1 when unique)"),
        Column("role", "str", "unique | survivor | removed | test_member | conflict_removed"),
        Column("train_test_duplicate", "bool", "the image has a duplicate on the other split"),
        Column("keep", "bool", "the image is used downstream (train: for training; test: for prediction)"),
    ),
))

CURATED_BOXES = _register(Schema(
    "curated_boxes", "results/curation/boxes.parquet",
    "Training boxes of kept images after clipping to the image.",
    (
        Column("row", "int", "0-based data row of train.csv"),
        Column("name", "str", "NAME of the image"),
        Column("x1", "float", "left, clipped to [0, width-1]"),
        Column("y1", "float", "top, clipped to [0, height-1]"),
        Column("x2", "float", "right, clipped to [0, width-1]"),
        Column("y2", "float", "bottom, clipped to [0, height-1]"),
        Column("label", "str", "class code"),
        Column("class_idx", "int", "class index"),
        Column("clipped", "bool", "at least one coordinate was moved into the image"),
    ),
))

FOLDS = _register(Schema(
    "folds", "results/curation/folds.parquet",
    "Cross-validation fold of every kept training image.",
    (
        Column("name", "str", "NAME of the image"),
        Column("fold", "int", "validation fold, 0..n_folds-1"),
        Column("group_id", "int", "duplicate group kept together (-1 when unique)"),
        Column("n_boxes", "int", "boxes on the image"),
        Column("multilabel", "str", "'|'-joined sorted class indices on the image"),
        Column("surface_bin", "int", "equal-width bin of width*height"),
        Column("box_ratio_bin", "int", "equal-width bin of mean 100*box area/image area"),
        Column("mean_bin", "int", "equal-width bin of the global pixel mean"),
        Column("std_bin", "int", "equal-width bin of the global pixel std"),
    ),
))

DEFECTS = _register(Schema(
    "defects", "<dataset>/defects.parquet",
    "Ground truth of every defect the synthetic generator injected; read by tests and evaluation only.",
    (
        Column("kind", "str", "defect kind (see synthesize.DEFECT_KINDS)"),
        Column("name", "str", "NAME of the affected image"),
        Column("source", "str", "NAME of the original image (duplicates), else empty"),
        Column("row", "int", "0-based data row in train.csv or test.csv concerned (-1 for image-level defects)"),
        Column("detail", "str", "parameters of the defect"),
    ),
))

CROPS = _register(Schema(
    "crops", "results/crops/crops.parquet",
    "Cell crops the classifiers train on (OOF detector-2 boxes of training images) and predict (test boxes).",
    (
        Column("crop_id", "str", "unique id '<name>#<k>', k = rank of the box within its image"),
        Column("name", "str", "NAME of the image"),
        Column("split", "str", "train | test"),
        Column("fold", "int", "validation fold of the image (-1 for test)"),
        Column("x1", "float", "crop box left, px"),
        Column("y1", "float", "crop box top, px"),
        Column("x2", "float", "crop box right, px"),
        Column("y2", "float", "crop box bottom, px"),
        Column("score", "float", "detector confidence (1.0 for ground-truth boxes)"),
        Column("label", "str", "class code of the matched ground-truth box (train); empty for test"),
        Column("class_idx", "int", "index of label (-1 when unknown)"),
        Column("trustii_id", "int", "test cell id the crop answers (-1 for train)"),
        Column("source", "str", "<crop detector>_oof (train) | <test detector>_test (test) | ground_truth"),
    ),
))

_XYXY = (
    Column("x1", "float", "left, px"),
    Column("y1", "float", "top, px"),
    Column("x2", "float", "right, px"),
    Column("y2", "float", "bottom, px"),
)

DETECTIONS = _register(Schema(
    "detections", "results/detection/{detector}/fold{fold}/oof_raw.parquet | results/detection/test_raw.parquet",
    "Raw detector output: one row per box kept by ultralytics (conf and class-agnostic NMS from config).",
    (
        Column("detector", "str", "detector name (config detectors key)"),
        Column("fold", "int", "fold of the model that predicted the box"),
        Column("name", "str", "NAME of the image"),
        *_XYXY,
        Column("score", "float", "confidence in [0, 1]"),
    ),
))

OOF_BOXES = _register(Schema(
    "oof_boxes", "results/detection/{detector}/oof.parquet",
    "Out-of-fold boxes fitted to the known cell count: the top-N boxes of every training image "
    "(N = its annotated boxes), rounded, clipped, padded with the full-image box (docs/method.md §4.2).",
    (
        Column("detector", "str", "detector name"),
        Column("fold", "int", "validation fold of the image (= the model that predicted it)"),
        Column("name", "str", "NAME of the image"),
        Column("rank", "int", "0-based rank of the box in its image (score, then area, descending)"),
        *_XYXY,
        Column("score", "float", "confidence (0 for a padding box)"),
        Column("padded", "bool", "full-image padding box (fewer detections than cells)"),
    ),
))

TEST_BOXES = _register(Schema(
    "test_boxes", "results/detection/test_boxes.parquet",
    "One box per test.csv row: all fold models fused by WBF, top-N by the known cell count (docs/method.md §4.3, §10.3).",
    (
        Column("row", "int", "0-based data row of test.csv"),
        Column("trustii_id", "int", "submission id of the expected cell"),
        Column("name", "str", "NAME of the image"),
        *_XYXY,
        Column("score", "float", "fused confidence (0 for a padding box)"),
        Column("source", "str", "detected | padded (too few boxes: full image) | unreadable (image quarantined)"),
    ),
))

NOISY_FLAGS = _register(Schema(
    "noisy_flags", "results/detection/noisy_flags.parquet",
    "Flags of the noisy-box search on calibrated detector-1 OOF output: one row per flagged annotation or "
    "unannotated detection, each past its family's false-discovery-rate threshold.",
    (
        Column("name", "str", "NAME of the image"),
        Column("fold", "int", "validation fold of the image"),
        Column("reason", "str", "defect family: unconfirmed_box | box_geometry | unannotated_cell"),
        Column("row", "int", "train.csv row of the annotation concerned (-1 for an unannotated detection)"),
        Column("x1", "float", "left of the box concerned, px"),
        Column("y1", "float", "top, px"),
        Column("x2", "float", "right, px"),
        Column("y2", "float", "bottom, px"),
        Column("iou", "float", "box_geometry: IoU of the best confident detection with the annotation; "
                               "unannotated_cell: the detection's largest overlap with an annotation; else 0"),
        Column("score", "float", "calibrated probability: P(confirms a box) of the confirming detection "
                                 "(unconfirmed_box) or of the best-fitting one (box_geometry); P(a cell lies "
                                 "there) of the detection (unannotated_cell)"),
        Column("evidence", "float", "strength of the flag in [0, 1] (posterior families: P(defect); "
                                    "box_geometry: 1 - one-sided p-value)"),
        Column("det_inside", "float", "share of the detection inside the annotation (NaN when none)"),
        Column("ann_inside", "float", "share of the annotation inside the detection (NaN when none)"),
        Column("area_z", "float", "log-area of the annotation vs its class, robust z (NaN for detections)"),
        Column("at_border", "bool", "unannotated_cell: the image border cuts the detection"),
        Column("n_annotated", "int", "annotated boxes on the image"),
        Column("n_detected", "int", "confident detections on the image"),
        Column("excluded", "bool", "the image is left out of detector 2 (false only where the safety cap bound)"),
    ),
))

LABEL_FLAGS = _register(Schema(
    "label_flags", "results/detection/label_flags.parquet",
    "Label-quality audit of every ground-truth crop: confident learning (cleanlab) on the multiclass "
    "classifiers' out-of-fold probabilities.",
    (
        Column("crop_id", "str", "crop id '<name>#<k>'"),
        Column("name", "str", "NAME of the image"),
        Column("row", "int", "train.csv row of the annotation"),
        Column("label", "str", "given class code"),
        Column("proposed", "str", "class code the classifiers prefer"),
        Column("quality", "float", "cleanlab label quality score (low = likely wrong)"),
        Column("issue", "bool", "cleanlab finds a label issue"),
        Column("action", "str", "drop | relabel | keep (config noisy.labels.action) for an issue; '' otherwise"),
    ),
))

REVIEW_OVERRIDES = _register(Schema(
    "review_overrides", "config noisy.overrides (written by `leukoflow review import`)",
    "Decisions of a human review of the flagged items, applied before detector 2 and the crops.",
    (
        Column("name", "str", "NAME of the image"),
        Column("row", "int", "train.csv row concerned (-1 for a new box or a whole image)"),
        Column("action", "str", "keep_image | delete_box | set_box | add_box | relabel"),
        Column("label", "str", "class code after review (relabel, add_box; else the given one)"),
        Column("x1", "float", "box after review, px (NaN when unchanged)"),
        Column("y1", "float", "top, px"),
        Column("x2", "float", "right, px"),
        Column("y2", "float", "bottom, px"),
        Column("reason", "str", "reviewer or tool note"),
    ),
))

BACKGROUNDS = _register(Schema(
    "backgrounds", "results/detection/backgrounds.parquet",
    "Synthetic background images: single-cell images with the white cell painted out (docs/method.md §6).",
    (
        Column("name", "str", "file name '<stem>_background.jpg'"),
        Column("path", "str", "image file"),
        Column("source_name", "str", "NAME of the image it was made from"),
        Column("source_split", "str", "train | test"),
        Column("fold", "int", "validation fold (the source image's for train sources, docs/method.md §7.1)"),
        Column("width", "int", "px (same as the source)"),
        Column("height", "int", "px"),
        Column("score", "float", "detector-1 confidence of the removed cell"),
        Column("masked_fraction", "float", "share of the image's pixels that were repainted"),
    ),
))

LOGIT_PLACEHOLDER = "logit_<k>"

LOGITS = _register(Schema(
    "logits", "results/classification/{model}/oof_logits.parquet | results/classification/{model}/test_logits.parquet",
    "Classifier logits, one row per crop (multiclass) or image (multilabel). A table of K logits has "
    "the columns below with `logit_<k>` expanded to logit_0 .. logit_{K-1} (class index order, "
    "constants.CLASSES, then 23 = Background): validate with `logits_schema(K)`. OOF tables hold "
    "the best checkpoint's logits for its validation fold without TTA; test tables the mean over the "
    "fold models of their (optionally hflip-averaged) logits.",
    (
        Column("id", "str", "crop_id (multiclass) or image NAME (multilabel)"),
        Column("name", "str", "NAME of the image"),
        Column("fold", "int", "validation fold that produced the row (OOF); -1 in test tables"),
        Column("trustii_id", "int", "test cell id of a test crop; -1 otherwise"),
        Column("truth", "int", "class index when the row has exactly one true label; -1 otherwise (test)"),
        Column("truth_labels", "str", "'|'-joined sorted class indices of every true label; empty for test"),
        Column(LOGIT_PLACEHOLDER, "float", "one column per output k = 0..K-1: the raw logit of class k"),
    ),
))


def logits_schema(n_logits: int) -> Schema:
    """LOGITS with its `logit_<k>` placeholder expanded to `logit_0 .. logit_{n_logits-1}`."""
    columns: list[Column] = []
    for column in LOGITS.columns:
        if column.name != LOGIT_PLACEHOLDER:
            columns.append(column)
            continue
        columns += [Column(f"logit_{k}", "float", f"raw logit of class {k}") for k in range(n_logits)]
    return Schema(f"{LOGITS.name}_{n_logits}", LOGITS.path_pattern, LOGITS.description, tuple(columns))


PSEUDO_LABELS = _register(Schema(
    "pseudo_labels", "results/pseudo_labels/round{round}.parquet",
    "Confident test crops that join one fold's classifier training in a pseudo-label round; each fold's "
    "labels come from the previous round's models of that fold only, which never saw its validation images.",
    (
        Column("crop_id", "str", "crop_id of the test crop"),
        Column("name", "str", "NAME of the test image (a single-cell image)"),
        Column("fold", "int", "the fold whose training set the crop joins"),
        Column("class_idx", "int", "pseudo class index (argmax of the mean multiclass probability)"),
        Column("confidence", "float", "detector score x mean multiclass probability of the class"),
    ),
))

ENSEMBLE_CLASSES = _register(Schema(
    "ensemble_classes", "results/ensemble/oof_classes.parquet | results/ensemble/test_classes.parquet",
    "Class of every crop from the blended ensemble (docs/method.md §9.1): weighted multiclass logits, softmax, "
    "blended with the multilabel sigmoid on single-cell images.",
    (
        Column("id", "str", "crop_id"),
        Column("name", "str", "NAME of the image"),
        Column("fold", "int", "validation fold of the image (OOF); -1 for test"),
        Column("trustii_id", "int", "test cell id of a test crop; -1 otherwise"),
        Column("truth", "int", "true class index (OOF); -1 for test"),
        Column("class_idx", "int", "predicted class index (constants.CLASSES)"),
        Column("label", "str", "predicted class code"),
        Column("probability", "float", "blended (single cell) or softmax (several cells) probability of the class"),
        Column("single_cell", "bool", "the image has exactly one cell (crop)"),
        Column("blended", "bool", "the multilabel model took part (single cell and a multilabel row exists)"),
    ),
))

ENSEMBLE_TRIALS = _register(Schema(
    "ensemble_trials", "results/ensemble/trials.csv",
    "Every trial of the Optuna weight search, in trial order.",
    (
        Column("trial", "int", "Optuna trial number"),
        Column("state", "str", "COMPLETE | FAIL | RUNNING (left by an interrupted run) | ..."),
        Column("origin", "str", "enqueued (equal weights, winner scheme) | sampled (TPE)"),
        Column("value", "float", "objective on the OOF predictions (NaN when not complete)"),
        Column("alpha", "float", "single-cell blend weight of the multiclass part (1 without a multilabel model)"),
        Column("weights", "str", "JSON object model -> normalised multiclass weight"),
    ),
))

SUBMISSION = _register(Schema(
    "submission", "results/submission.csv",
    "The challenge submission: one row per test.csv row, in test.csv order (docs/method.md §10.2).",
    (
        Column("trustii_id", "int", "test cell id"),
        Column("NAME", "str", "image file name"),
        Column("x1", "int", "left, px"),
        Column("y1", "int", "top, px"),
        Column("x2", "int", "right, px"),
        Column("y2", "int", "bottom, px"),
        Column("class", "str", "class code (constants.CLASSES)"),
    ),
))

PREDICTIONS = _register(Schema(
    "predictions", "<out>.csv of `leukoflow predict`",
    "Cells found by `leukoflow predict` on new images: one row per box, images in input order; the "
    "challenge's submission columns first. The CSV adds one `prob_<class>` column per class "
    "(`leukoflow.inference.outputs.PREDICTIONS_CSV`).",
    (
        Column("trustii_id", "int", "expected-cell id (with --expected-counts); -1 otherwise"),
        Column("NAME", "str", "image id: its path relative to the folder or glob root given (the file name "
                              "for a file given directly)"),
        Column("x1", "int", "left, px"),
        Column("y1", "int", "top, px"),
        Column("x2", "int", "right, px"),
        Column("y2", "int", "bottom, px"),
        Column("class", "str", "class code (the bundle's fallback class when the image is unreadable)"),
        Column("probability", "float", "probability of the class (NaN when unreadable)"),
        Column("score", "float", "fused detector confidence of the box (0 for a padding box)"),
        Column("rank", "int", "0-based rank of the box in its image"),
        Column("source", "str", "detected | padded (fewer boxes than expected: full image) | unreadable"),
        Column("path", "str", "image file read"),
        Column("width", "int", "image width, px (0 when unreadable)"),
        Column("height", "int", "image height, px (0 when unreadable)"),
    ),
))


_KIND_CHECKS = {
    "str": pd.api.types.is_string_dtype,
    "int": pd.api.types.is_integer_dtype,
    "float": pd.api.types.is_float_dtype,
    "bool": pd.api.types.is_bool_dtype,
}


class SchemaError(ValueError):
    """A table does not match its documented schema."""


def validate(frame: pd.DataFrame, schema: Schema, source: str = "") -> pd.DataFrame:
    where = f" ({source})" if source else ""
    if list(frame.columns) != schema.column_names:
        missing = [c for c in schema.column_names if c not in frame.columns]
        extra = [c for c in frame.columns if c not in schema.column_names]
        raise SchemaError(
            f"table {schema.name}{where}: columns differ from the schema; "
            f"missing {missing}, unexpected {extra}, expected order {schema.column_names}"
        )
    for column in schema.columns:
        series = frame[column.name]
        if len(series) and not _KIND_CHECKS[column.dtype](series.dtype):
            raise SchemaError(
                f"table {schema.name}{where}: column {column.name!r} has dtype {series.dtype}, "
                f"schema says {column.dtype}"
            )
        if column.dtype != "float" and series.isna().any():
            # only float columns may hold a missing value (NaN = not measured); text uses ""
            rows = list(series.index[series.isna().to_numpy()][:5])
            raise SchemaError(f"table {schema.name}{where}: column {column.name!r} ({column.dtype}) "
                              f"has missing values, first at rows {rows}")
    return frame


def write_table(frame: pd.DataFrame, path: str | Path, schema: Schema) -> None:
    """Validate and write; parquet or CSV by suffix. Rows keep their order."""
    validate(frame, schema, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


class TableWriter:
    """A parquet table written in row groups as its rows arrive, each group validated like
    `write_table`'s frame, so that peak memory is one group whatever the table's length. The file
    appears at `path` only on `commit` (a partial file never passes for the table)."""

    def __init__(self, path: str | Path, schema: Schema) -> None:
        self.path, self.schema = Path(path), schema
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._writer = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(validate(frame, self.schema, str(self.path)), preserve_index=False)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._partial, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))

    def commit(self) -> None:
        if self._writer is None:
            self.write(empty_frame(self.schema))
        self._writer.close()
        os.replace(self._partial, self.path)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._partial.unlink(missing_ok=True)


def read_table(path: str | Path, schema: Schema, *, skip: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read and validate a table; `skip` names columns left unread (a wide column's memory)."""
    path = Path(path)
    schema = schema.without(*skip) if skip else schema
    columns = schema.column_names if skip else None  # all of them: an unexpected column is reported
    if path.suffix == ".csv":
        # "" is a missing float (as written for NaN) but an empty text, never a missing one
        frame = pd.read_csv(path, keep_default_na=False, dtype={c.name: _CSV_DTYPES[c.dtype] for c in schema.columns},
                            na_values={c.name: [""] for c in schema.columns if c.dtype == "float"}, usecols=columns)
    else:
        frame = _read_parquet(path, columns)
    return validate(frame, schema, str(path))


def _read_parquet(path: Path, columns: list[str] | None) -> pd.DataFrame:
    """The parquet file as a frame (the dtypes of `pd.read_parquet`), without pre-buffering whole
    column chunks: for a 71 MB table (300k images) `pd.read_parquet` held 220 MB at its peak, this
    (with Arrow's system allocator, chosen in `leukoflow/__init__.py`) 116 MB (BENCHMARKS.md)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns, pre_buffer=False).to_pandas(self_destruct=True)


_CSV_DTYPES = {"str": str, "int": "int64", "float": "float64", "bool": bool}


PANDAS_DTYPES = {"str": "str", "int": "int64", "float": "float64", "bool": "bool"}


def empty_frame(schema: Schema) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=PANDAS_DTYPES[c.dtype]) for c in schema.columns})


def cast(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """The schema's columns of `frame`, in the schema's order, cast to its dtypes (the one cast of
    the package; a column the frame lacks raises SchemaError naming it)."""
    missing = [c for c in schema.column_names if c not in frame.columns]
    if missing:
        raise SchemaError(f"table {schema.name}: cannot cast, missing columns {missing}")
    return frame[schema.column_names].astype({c.name: PANDAS_DTYPES[c.dtype] for c in schema.columns})


def schema_frame(columns: dict[str, object], schema: Schema) -> pd.DataFrame:
    """Frame with exactly the schema's columns, in its order and dtypes (also when empty)."""
    return cast(pd.DataFrame({name: columns[name] for name in schema.column_names}), schema)
