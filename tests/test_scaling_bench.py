"""tests/bench/scaling.py at a tiny size: every stage runs in its own child process and leaves its
wall/CPU time, peak RSS and disk; the CSV, JSON and plot are written; a second call resumes."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # nine child processes, each importing pandas/PIL (about 20 s)


def load_scaling():
    spec = importlib.util.spec_from_file_location("scaling_bench", REPO / "tests" / "bench" / "scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaling_bench_measures_every_stage_at_200_images(tmp_path):
    scaling = load_scaling()
    work, table, plot = tmp_path / "work", tmp_path / "scaling.csv", tmp_path / "scaling.png"
    rows = scaling.main(["--work", str(work), "--sizes", "200", "--workers", "1", "--csv", str(table),
                         "--json", str(tmp_path / "scaling.json"), "--plot", str(plot), "--prune"])
    assert [row["stage"] for row in rows] == list(scaling.STAGES)
    for row in rows:
        assert row["n_images"] == 200 and row["wall_seconds"] > 0 and row["cpu_seconds"] > 0
        assert 20 < row["peak_rss_mib"] < 4096, row
    by_stage = {row["stage"]: row for row in rows}
    assert by_stage["generate"]["disk_mib"] > 1 and by_stage["cache_images"]["disk_mib"] > 0
    folder = work / "n200"
    ingest = json.loads((folder / "stages" / "ingest.summary.json").read_text())
    assert ingest["images_in"] == 200 and ingest["images_quarantined"] == 0
    assert not (folder / "yolo").exists()  # pruned once measured
    assert len(list(csv.DictReader(table.open()))) == len(scaling.STAGES)
    assert plot.stat().st_size > 10_000
    again = scaling.main(["--work", str(work), "--sizes", "200", "--workers", "1"])
    assert again == rows  # recorded stages are read back, not run again
    table = tmp_path / "table.md"
    assert scaling.main(["--work", str(work), "--sizes", "200", "--report-only", "--markdown", str(table)]) == rows
    lines = table.read_text().splitlines()
    assert len(lines) == 2 + len(scaling.STAGES) and lines[2].startswith("| generate | ")
