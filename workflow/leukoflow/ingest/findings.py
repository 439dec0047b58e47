"""What ingest decides about a row or an image: findings, reason codes, status, the error it raises."""

from __future__ import annotations

from leukoflow.constants import TRAIN_COLUMNS
from leukoflow.ledger import ACTION_QUARANTINED, STATUS_OK, STATUS_QUARANTINED, STATUS_REPAIRED, join_reasons

STAGE = "ingest"
TRAIN_TABLE, TEST_TABLE, IMAGES_TABLE = "train.csv", "test.csv", "images"
SPLIT_TRAIN, SPLIT_TEST = "train", "test"
COORDINATE_COLUMNS = TRAIN_COLUMNS[1:5]
NAME_COLUMN, CLASS_COLUMN, ID_COLUMN = "NAME", "class", "trustii_id"

# Reason codes written by ingest; image reasons reach the rows of that image as "image_<code>".
REASON_CODES: dict[str, str] = {
    "whitespace_stripped": "a field had leading/trailing white space, removed (repair)",
    "trailing_empty_field": "every row of the file ended with one empty field (a spreadsheet export), removed (repair)",
    "field_count": "the row has a different number of fields than the header",
    "unsafe_name": "NAME is empty or not a plain file name ('/', '\\', '.', '..', control characters)",
    "bad_coordinate": "a coordinate is not a finite decimal number",
    "unknown_class": "class is not one of constants.CLASSES (exact, case-sensitive)",
    "duplicate_row": "the same NAME, box and class as an earlier train.csv row",
    "bad_trustii_id": "trustii_id is not an integer",
    "duplicate_trustii_id": "trustii_id already used by an earlier test.csv row (the first one is kept)",
    "missing_file": "no regular file of that NAME in the image folder (the detail names a file that differs "
                    "only in case or in Unicode normalization, NFC/NFD)",
    "zero_size": "the image file is empty",
    "too_large": "the file is larger than ingest.max_image_mb; it was not read",
    "unreadable": "not a decodable image (PIL and its plugins cannot decode it)",
    "truncated_jpeg": "the file decodes only with ImageFile.LOAD_TRUNCATED_IMAGES; working copy written (repair)",
    "truncated_image": "as truncated_jpeg, for another format",
    "high_bit_depth": "16-bit, 32-bit or float pixels scaled linearly to 8 bit (never clipped); working copy written (repair)",
    "mode_<MODE>": "stored in PIL mode <MODE>, not RGB; RGB working copy written (repair)",
    "name_in_both_splits": "NAME is referenced by train.csv and by test.csv",
    "unreferenced_image": "a file of the image folder that no CSV row references (not a row)",
}

Finding = tuple[str, str, str, str]  # (field, action, reason, detail) about one row or image


class IngestError(ValueError):
    """An input table or folder is structurally unusable, or no usable row is left; the message names
    file, line and field (or why the rows went)."""


def is_quarantined(findings: list[Finding]) -> bool:
    return any(action == ACTION_QUARANTINED for _, action, _, _ in findings)


def status_of(findings: list[Finding]) -> tuple[str, str]:
    """(status, ';'-joined reason codes) of a row or image from its findings."""
    if not findings:
        return STATUS_OK, ""
    status = STATUS_QUARANTINED if is_quarantined(findings) else STATUS_REPAIRED
    return status, join_reasons([reason for _, _, reason, _ in findings])
