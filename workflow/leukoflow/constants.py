"""Class codes of the Cytologia challenge (index order = logit order everywhere, docs/method.md §1.2)."""

CLASSES: tuple[str, ...] = (
    "PNN", "LY", "MO", "EO", "BA", "Er", "PM", "Thromb", "LAM3", "Lysee", "LyB", "LLC",
    "MBL", "LGL", "B", "M", "MM", "LF", "MoB", "LH_lyAct", "LM", "LZMG", "SS",
)
CLASS_TO_INDEX: dict[str, int] = {code: index for index, code in enumerate(CLASSES)}
BACKGROUND_CLASS = "Background"

TRAIN_COLUMNS = ("NAME", "x1", "y1", "x2", "y2", "class")
TEST_COLUMNS = ("trustii_id", "NAME")
SUBMISSION_COLUMNS = ("trustii_id", "NAME", "x1", "y1", "x2", "y2", "class")
