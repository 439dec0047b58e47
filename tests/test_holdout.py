import pandas as pd

from leukoflow.ingest.holdout import hold_out_test


def _boxes(tmp_path):
    rows = [(f"img{i:03d}.jpg", 1, 2, 30, 40, "LY") for i in range(20)] + [("img000.jpg", 5, 5, 9, 9, "MO")]
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=["NAME", "x1", "y1", "x2", "y2", "class"]).to_csv(path, index=False)
    return path


def test_holdout_splits_whole_images_and_accounts_for_every_row(tmp_path):
    summary = hold_out_test(_boxes(tmp_path), tmp_path / "out", fraction=0.25, seed=3)
    train = pd.read_csv(tmp_path / "out" / "train.csv")
    test = pd.read_csv(tmp_path / "out" / "test.csv")
    truth = pd.read_csv(tmp_path / "out" / "test_truth.csv")
    assert summary["test_images"] == 5 and summary["train_rows"] + summary["test_rows"] == 21
    assert set(train["NAME"]).isdisjoint(test["NAME"])
    assert truth["trustii_id"].is_unique and list(truth["trustii_id"]) == list(test["trustii_id"])


def test_holdout_is_deterministic(tmp_path):
    source = _boxes(tmp_path)
    hold_out_test(source, tmp_path / "a", fraction=0.3, seed=1)
    hold_out_test(source, tmp_path / "b", fraction=0.3, seed=1)
    for name in ("train.csv", "test.csv", "test_truth.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
