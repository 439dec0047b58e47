"""The rule scripts read only the truth tables their rule declares (snakemake's named inputs)."""

from pathlib import Path

import pandas as pd
from snakemake.iocontainers import InputFiles

from leukoflow.classification.items import truth_for, truth_from_tables
from leukoflow.classification.spec import ClassifierSpec, model_defaults, with_defaults

from leukoflow import tables


def test_truth_from_tables_reads_the_declared_crop_table(tmp_path):
    crops = pd.DataFrame({
        "crop_id": ["a.jpg#0", "b.jpg#0"], "name": ["a.jpg", "b.jpg"], "split": ["train", "test"],
        "fold": [0, -1], "x1": [1.0, 2.0], "y1": [1.0, 2.0], "x2": [9.0, 9.0], "y2": [9.0, 9.0],
        "score": [1.0, 0.9], "label": ["LY", ""], "class_idx": [1, -1], "trustii_id": [-1, 7],
        "source": ["ground_truth", "det1_test"],
    })
    path = tmp_path / "crops.parquet"
    tables.write_table(crops, path, tables.CROPS)
    defaults = model_defaults(Path(__file__).resolve().parents[1] / "config" / "schema.yaml")
    spec = ClassifierSpec.from_config(with_defaults(
        {"name": "mc", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1, "batch_size": 2,
         "lr": 0.1}, defaults))
    expected = truth_for(spec, crops=tables.read_table(path, tables.CROPS))
    got = truth_from_tables(spec, InputFiles(fromdict={"crops": str(path)}))
    pd.testing.assert_frame_equal(got, expected)
