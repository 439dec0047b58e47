"""Tests of the `leukoflow` command line, run as a subprocess (`python -m leukoflow.cli`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]

TRUTH = pd.DataFrame({
    "trustii_id": [1, 2, 3], "NAME": ["a.jpg", "b.jpg", "a.jpg"],
    "x1": [0, 0, 20], "y1": [0, 0, 20], "x2": [10, 10, 30], "y2": [10, 10, 30],
    "class": ["LY", "MO", "PNN"],
})


def run_cli(*args: str) -> subprocess.CompletedProcess:
    paths = [str(REPO / "workflow"), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    return subprocess.run([sys.executable, "-m", "leukoflow.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.csv" for name in ("truth", "good", "bad", "test")}
    TRUTH.to_csv(paths["truth"], index=False)
    TRUTH.iloc[::-1].to_csv(paths["good"], index=False)
    bad = TRUTH.copy()
    bad.loc[0, "class"] = "Pnn"
    bad.loc[1, "x2"] = -5
    bad.to_csv(paths["bad"], index=False)
    TRUTH[["trustii_id", "NAME"]].to_csv(paths["test"], index=False)
    return paths


def test_score_json_prints_exactly_one_object(files):
    done = run_cli("score", "--truth", str(files["truth"]), "--submission", str(files["bad"]), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"score", "mean_rescaled_giou", "macro_f1"}
    assert 0 < result["score"] < 1


def test_score_plain_prints_three_figures_and_per_row(files, tmp_path):
    per_row = tmp_path / "per_row.csv"
    done = run_cli("score", "--truth", str(files["truth"]), "--submission", str(files["good"]),
                   "--per-row", str(per_row))
    assert done.returncode == 0, done.stderr
    assert "score:              1.000000" in done.stdout
    assert "mean rescaled GIoU" in done.stdout and "macro F1" in done.stdout
    assert len(pd.read_csv(per_row)) == 3


@pytest.mark.parametrize("role", ["truth", "submission"])
def test_score_unreadable_file_names_it_without_traceback(files, tmp_path, role):
    missing = tmp_path / "absent.csv"
    paths = {"truth": files["truth"], "submission": files["good"], role: missing}
    done = run_cli("score", "--truth", str(paths["truth"]), "--submission", str(paths["submission"]))
    assert done.returncode == 2
    assert "absent.csv" in done.stderr and role in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_score_missing_column_is_reported(files, tmp_path):
    broken = tmp_path / "broken.csv"
    TRUTH.drop(columns="class").to_csv(broken, index=False)
    done = run_cli("score", "--truth", str(files["truth"]), "--submission", str(broken))
    assert done.returncode == 2 and "broken.csv" in done.stderr and "class" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_ok(files):
    done = run_cli("validate", "--test", str(files["test"]), "--submission", str(files["good"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK")


def test_validate_reports_problems_and_fails(files, tmp_path):
    problems_csv = tmp_path / "problems.csv"
    done = run_cli("validate", "--test", str(files["test"]), "--submission", str(files["bad"]),
                   "--problems-csv", str(problems_csv))
    assert done.returncode == 1
    assert "unknown_class" in done.stdout and "inverted_box" in done.stdout
    assert set(pd.read_csv(problems_csv)["problem"]) == {"unknown_class", "inverted_box"}


def test_validate_unreadable_test_table(files, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = run_cli("validate", "--test", str(empty), "--submission", str(files["good"]))
    assert done.returncode == 2 and "empty.csv" in done.stderr and "Traceback" not in done.stderr


def test_tool_state_goes_to_the_user_cache_not_the_checkout(tmp_path, monkeypatch):
    from leukoflow.engine import offline

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert offline.default_config_dir() == tmp_path / "cache" / "leukoflow" / "ultralytics"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert REPO not in offline.default_config_dir().parents


def test_predict_without_images_says_what_to_give(tmp_path):
    done = run_cli("predict", "--bundle", str(tmp_path))
    assert done.returncode == 2 and "at least one image" in done.stderr and "Traceback" not in done.stderr
