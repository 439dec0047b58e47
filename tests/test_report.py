"""The Snakemake report: the leukoflow.report items on small frames, the tiny run's report, and one headless render."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageStat

from leukoflow.report import dataset, models, pages, run_tables

from leukoflow import tables
from leukoflow.constants import CLASSES
from tests.conftest import REPO, run_workflow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- dataset and ledger

def test_class_distribution_skips_quarantined_rows_and_keeps_class_order():
    boxes = pd.DataFrame({"label": ["LY", "PNN", "LY", "XX"], "status": ["ok", "repaired", "ok", "quarantined"]})
    counts = dataset.class_distribution(boxes)
    assert list(counts.index) == list(CLASSES)
    assert counts["LY"] == 2 and counts["PNN"] == 1 and counts.sum() == 3


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], {}),  # no cells
        (["a", "a", "b"], {1: 1, 2: 1}),  # one image with two cells, one with one
        (["a", "b", "c"], {1: 3}),  # single-cell images only
    ],
)
def test_cells_per_image(names, expected):
    assert dataset.cells_per_image(pd.Series(names, dtype=str)).to_dict() == expected


def _ledger(rows: list[tuple]) -> pd.DataFrame:
    columns = ["stage", "table", "row", "name", "field", "action", "reason", "detail"]
    return tables.schema_frame({c: [r[k] for r in rows] for k, c in enumerate(columns)}, tables.LEDGER)


def test_ledger_summary_counts_entries_and_images_per_reason_in_stage_order():
    ingest = _ledger([("ingest", "train.csv", 1, "a.jpg", "NAME", "quarantined", "image_unreadable", ""),
                      ("ingest", "train.csv", 2, "a.jpg", "NAME", "quarantined", "image_unreadable", ""),
                      ("ingest", "train.csv", 3, "b.jpg", "x1", "repaired", "box_clipped", "")])
    curation = _ledger([("deduplicate", "images", -1, "c.jpg", "phash", "removed", "exact_duplicate", "")])
    summary = dataset.ledger_summary([ingest, curation])
    assert list(summary["stage"]) == ["ingest", "ingest", "deduplicate"]
    first = summary.iloc[0]
    assert (first["reason"], first["entries"], first["images"]) == ("image_unreadable", 2, 1)
    assert summary["entries"].sum() == 4


def test_ledger_summary_of_empty_ledgers_is_an_empty_table():
    summary = dataset.ledger_summary([tables.empty_frame(tables.LEDGER)])
    assert summary.empty and {"stage", "reason", "entries", "images"} <= set(summary.columns)


# ----------------------------------------------------------------------------- duplicate groups

def _groups() -> pd.DataFrame:
    rows = []
    for group in range(8):
        kind = "exact" if group < 5 else "near"
        rows.append((group, f"g{group}a.jpg", "train", kind, "survivor"))
        rows.append((group, f"g{group}b.jpg", "test" if group == 7 else "train", kind,
                     "test_member" if group == 7 else "removed"))
    frame = pd.DataFrame(rows, columns=["group_id", "name", "split", "kind", "role"])
    return frame.assign(reason="", labels="", hash_distance=0, similarity=1.0).astype({"group_id": "int64", "hash_distance": "int64"})[tables.DUPLICATE_GROUPS.column_names]


def test_duplicate_examples_are_seeded_capped_and_show_every_kind():
    groups = _groups()
    first = dataset.duplicate_examples(groups, n_groups=3, seed=7)
    assert first.equals(dataset.duplicate_examples(groups, n_groups=3, seed=7))
    chosen = first.groupby("group_id").first()
    assert len(chosen) == 3
    assert {"exact", "near"} <= set(chosen["kind"])
    assert (first["split"] == "test").any()  # the train/test group is shown
    assert len(dataset.duplicate_examples(groups, n_groups=50, seed=7)) == len(groups)


def test_duplicate_examples_of_no_groups_is_empty():
    assert dataset.duplicate_examples(_groups().iloc[:0], n_groups=5, seed=0).empty


def test_duplicate_montage_draws_missing_files_as_grey_tiles(tmp_path):
    image = tmp_path / "g0a.jpg"
    Image.new("RGB", (120, 90), (200, 30, 30)).save(image)
    examples = dataset.duplicate_examples(_groups(), n_groups=2, seed=0)
    target = tmp_path / "montage.png"
    dataset.draw_duplicate_examples(examples, {"g0a.jpg": str(image)}, target, tile_px=48)
    assert target.read_bytes().startswith(PNG_SIGNATURE)
    dataset.draw_duplicate_examples(examples.iloc[:0], {}, tmp_path / "none.png", tile_px=48)
    assert (tmp_path / "none.png").exists()


# ----------------------------------------------------------------------------- detection

def _boxes_and_oof(shift: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    names = ["a.jpg", "a.jpg", "b.jpg"]
    xyxy = np.array([[10, 10, 50, 50], [60, 10, 100, 50], [20, 20, 80, 80]], float)
    boxes = pd.DataFrame({"row": np.arange(3), "name": names, "x1": xyxy[:, 0], "y1": xyxy[:, 1], "x2": xyxy[:, 2],
                          "y2": xyxy[:, 3], "label": "LY", "class_idx": 1, "clipped": False})
    moved = xyxy + shift
    oof = pd.DataFrame({"detector": "det1", "fold": [0, 0, 1], "name": names, "rank": [0, 1, 0],
                        "x1": moved[:, 0], "y1": moved[:, 1], "x2": moved[:, 2], "y2": moved[:, 3], "score": 0.9,
                        "padded": False})
    return tables.validate(boxes, tables.CURATED_BOXES), tables.validate(oof, tables.OOF_BOXES)


def test_oof_giou_is_one_for_exact_boxes_and_carries_the_fold():
    boxes, oof = _boxes_and_oof(0.0)
    gious = models.oof_giou(oof, boxes)
    assert np.allclose(gious["giou"], 1.0)
    assert sorted(gious["fold"]) == [0, 0, 1]
    shifted = models.oof_giou(*reversed(_boxes_and_oof(5.0)))
    assert (shifted["giou"] < 1.0).all() and (shifted["giou"] > 0.0).all()


def test_detector_folds_and_figure(tmp_path):
    summaries = {"det1": {"per_fold": {"1": {"map50": 0.5, "map50_95": 0.2, "mean_rescaled_giou": 0.8,
                                             "train_seconds": 3.0},
                                       "0": {"map50": 0.4, "map50_95": 0.1, "mean_rescaled_giou": 0.7,
                                             "train_seconds": 2.0}}}}
    folds = models.detector_folds(summaries)
    assert list(folds["fold"]) == [0, 1] and list(folds["map50"]) == [0.4, 0.5]
    boxes, oof = _boxes_and_oof(2.0)
    target = tmp_path / "detector.png"
    models.draw_detector_oof({"det1": models.oof_giou(oof, boxes)}, folds, target, bins=10)
    assert target.read_bytes().startswith(PNG_SIGNATURE)


# ----------------------------------------------------------------------------- classification and ensemble

def test_per_class_f1_long_table_and_figure(tmp_path):
    summary = {"models": {"mc": {"per_class_f1": {"PNN": {"f1": 0.5, "support": 4}, "LY": {"f1": 1.0, "support": 2}}},
                          "ml": {"per_class_f1": {"PNN": {"f1": 0.25, "support": 4},
                                                  "Background": {"f1": 0.0, "support": 0}}}}}
    frame = models.per_class_f1(summary)
    assert len(frame) == 4 and set(frame["model"]) == {"mc", "ml"}
    assert frame.set_index(["model", "class"]).loc[("mc", "LY"), "f1"] == 1.0
    models.draw_per_class_f1(frame, tmp_path / "f1.png")
    assert (tmp_path / "f1.png").read_bytes().startswith(PNG_SIGNATURE)


def test_ensemble_tables_list_weights_alpha_and_scheme_scores():
    summary = {"weights": {"weights": {"mc_a": 0.7, "mc_b": 0.3}, "alpha": 0.4},
               "winner_weights": {"weights": {"mc_a": 0.5, "mc_b": 0.5}, "alpha": 0.457},
               "best_oof": 0.61, "equal_weights_oof": 0.6, "winner_scheme_oof": 0.59, "best_single_model": "mc_a",
               "best_single_model_oof": 0.58, "nested_estimate": None, "objective": "metric", "n_trials": 10}
    sections = models.ensemble_tables({"scheme": "best", "study": "ensemble-abc"}, summary)
    weights = sections["weights"].set_index("model")
    assert weights.loc["mc_a", "searched"] == 0.7 and weights.loc["mc_b", "winner scheme"] == 0.5
    assert weights.iloc[-1]["searched"] == 0.4  # alpha
    scores = next(frame for title, frame in sections.items() if title.startswith("OOF objective"))
    assert scores["oof"].iloc[0] == 0.61 and np.isnan(scores["oof"].iloc[-1])


def test_final_scores_put_the_official_score_first():
    metrics = {"classification": {"oof_macro_f1": {"mc": 0.3, "ml": 0.2}}, "curation": {"dedup_recall": 1.0,
               "flag": True}, "ingest": {"rows_in": 10}, "macro_f1": 0.4, "mean_rescaled_giou": 0.9, "score": 0.5}
    sections = run_tables.final_scores(metrics)
    headline = sections["official score of the submission"]
    assert list(headline["figure"]) == ["score", "mean_rescaled_giou", "macro_f1"]
    stages = sections["headline figures per stage"]
    assert list(stages["stage"]) == ["ingest", "curation", "curation", "classification", "classification"]
    assert stages["value"].iloc[2] == "True"  # workflow order; booleans as text, nested keys flattened
    assert list(stages["figure"].iloc[3:]) == ["oof_macro_f1.mc", "oof_macro_f1.ml"]


# ----------------------------------------------------------------------------- software and runtimes

def test_package_versions_report_missing_packages():
    versions = run_tables.package_versions(["pandas", "no-such-package-xyz"]).set_index("package")["version"]
    assert versions["pandas"] == pd.__version__
    assert versions["no-such-package-xyz"] == "not installed"


def test_git_commit_outside_a_checkout_is_unknown(tmp_path):
    assert run_tables.git_commit(tmp_path) == run_tables.UNKNOWN
    inside = run_tables.git_commit(REPO)
    assert inside == run_tables.UNKNOWN or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", inside)


def test_software_tables_name_python_torch_cuda_and_the_commit(tmp_path):
    sections = run_tables.software_tables(["numpy"], repository=tmp_path)
    environment = sections["environment"].set_index("component")["version"]
    assert {"python", "torch", "torch CUDA build", "git commit"} <= set(environment.index)
    assert environment["git commit"] == run_tables.UNKNOWN
    assert sections["python packages"]["version"].iloc[0] == np.__version__


BENCHMARK_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(path: Path, seconds: float, rss: str = "100.5") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BENCHMARK_HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50.0\t{seconds / 2}\n")
    return path


def test_runtime_tables_per_rule_and_per_job(tmp_path):
    root = tmp_path / "benchmarks"
    paths = [_benchmark(root / "ingest.tsv", 4.0), _benchmark(root / "train_detector/det1/fold0.tsv", 10.0),
             _benchmark(root / "train_detector/det1/fold1.tsv", 12.0, rss="-")]
    sections = run_tables.runtime_tables(paths, root)
    per_rule = sections["per rule"].set_index("rule")
    assert list(per_rule.index) == ["train_detector", "ingest", "all benchmarked jobs"]
    assert per_rule.loc["train_detector", "jobs"] == 2 and per_rule.loc["train_detector", "total_seconds"] == 22.0
    assert per_rule.loc["all benchmarked jobs", "total_seconds"] == 26.0
    jobs = sections["per job"]
    assert list(jobs["job"]) == ["", "det1/fold0", "det1/fold1"]
    assert np.isnan(jobs["max_rss_mb"].iloc[2])  # '-' (not measured) reads as missing


def test_runtime_tables_without_benchmarks():
    sections = run_tables.runtime_tables([])
    assert sections["per job"].empty and sections["per rule"]["jobs"].iloc[-1] == 0


def test_html_tables_escape_text_and_mark_numbers():
    page = pages.html_tables({"a <b>": pd.DataFrame({"name": ["<x>"], "value": [0.25]}), "empty": pd.DataFrame()},
                              "T & T")
    assert "<title>T &amp; T</title>" in page and "&lt;x&gt;" in page and "<x>" not in page
    assert '<td class="num">0.25</td>' in page and "<em>none</em>" in page


def test_dataset_overview_figure(tmp_path):
    images = pd.DataFrame({"split": ["train", "train", "test", "train"], "width": [100, 120, 110, 0],
                           "height": [90, 100, 95, 0]})
    boxes = pd.DataFrame({"name": ["a", "a", "b"], "label": ["LY", "PNN", "LY"], "status": ["ok", "ok", "ok"]})
    test = pd.DataFrame({"name": ["c", "c"], "status": ["ok", "ok"]})
    dataset.draw_dataset_overview(images, boxes, test, tmp_path / "overview.png")
    with Image.open(tmp_path / "overview.png") as image:
        assert image.width > 800 and ImageStat.Stat(image.convert("L")).stddev[0] > 5


# ----------------------------------------------------------------------------- the tiny run's report

CATEGORIES = {
    "1. Dataset": {"dataset overview", "data-quality ledger"},
    "2. Curation": {"duplicate groups", "fold balance"},
    "3. Detection": {"OOF GIoU and mAP per fold", "detector figures per fold", "background images",
                     "noisy-box audit: unconfirmed_box", "noisy-box audit: unannotated_cell",
                     "noisy-box audit: box_geometry", "noisy-box precision/recall per defect kind"},
    "4. Classification": {"per-class F1", "confusion matrices"},
    "5. Ensemble": {"ensemble weights", "Optuna history"},
    "6. Scores": {"final scores"},
    "7. Software and runtimes": {"software versions", "runtime per rule"},
}


class _ReportParser(HTMLParser):
    """The report's data scripts (`<script id=...>var x = {...};`) and every external src/href."""

    def __init__(self):
        super().__init__()
        self.scripts: dict[str, str] = {}
        self.external: list[str] = []
        self._script_id: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.external += [value for key in ("src", "href") if re.match(r"(https?:)?//", value := attrs.get(key) or "")]
        self._script_id = attrs.get("id") if tag == "script" else None

    def handle_data(self, data):
        if self._script_id:
            self.scripts[self._script_id] = self.scripts.get(self._script_id, "") + data

    def handle_endtag(self, tag):
        self._script_id = None

    def variable(self, script_id: str):
        text = self.scripts[script_id].strip()
        return json.loads(re.fullmatch(r"var \w+ = (.*);", text, flags=re.S).group(1))


@pytest.fixture(scope="module")
def built_report(tiny_run, tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("report") / "report.html"
    started = time.perf_counter()
    run_workflow(tiny_run, "--report", str(target))
    seconds = time.perf_counter() - started
    parser = _ReportParser()
    parser.feed(target.read_text(encoding="utf-8"))
    return {"path": target, "parser": parser, "seconds": seconds}


def _data(result: dict) -> bytes:
    header, payload = result["data_uri"].split(",", 1)
    assert header.startswith("data:") and header.endswith(";base64")
    return base64.b64decode(payload)


@pytest.mark.e2e
def test_report_holds_every_category_and_item(built_report):
    parser = built_report["parser"]
    categories, results = parser.variable("categories"), parser.variable("results")
    assert set(categories) == set(CATEGORIES)
    for category, expected in CATEGORIES.items():
        paths = [path for subcategory in categories[category].values() for path in subcategory]
        items = {results[path]["labels"]["item"] for path in paths}
        assert items == expected, category
        for path in paths:
            assert results[path]["caption"].strip(), f"{path} has no caption"
            data = _data(results[path])
            if path.endswith(".png"):
                assert data.startswith(PNG_SIGNATURE), path
            elif path.endswith(".csv"):  # Snakemake's report shows a CSV as its own table
                assert b"," in data.splitlines()[0] and len(data.splitlines()) >= 2, path
            else:
                assert b"<table" in data, path
    assert "leukoflow" in parser.variable("workflow-desc")
    assert not parser.external, f"the report loads external resources: {parser.external[:5]}"


@pytest.mark.e2e
def test_report_tables_hold_the_run_figures(built_report):
    results = built_report["parser"].variable("results")
    by_label = {entry["labels"]["item"]: _data(entry).decode("utf-8") for entry in results.values()
                if entry["mime_type"] == "text/html"}
    software = by_label["software versions"]
    assert "torch CUDA build" in software and "git commit" in software and "snakemake" in software
    runtimes = by_label["runtime per rule"]
    for rule in ("synthesize", "ingest", "deduplicate", "train_detector", "train_classifier",
                 "search_ensemble_weights", "all benchmarked jobs"):
        assert f"<td>{rule}</td>" in runtimes, rule
    assert "<td>score</td>" in by_label["final scores"]
    assert "alpha" in by_label["ensemble weights"]
    # Snakemake's own statistics come from .snakemake/ metadata of the same working directory
    assert {"train_detector", "train_classifier"} <= {row["rule"] for row in
                                                      built_report["parser"].variable("runtimes")["data"]["values"]}


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CONSOLE_MARK = "LEUKOFLOW_CONSOLE_ERROR"
# Put first in <head>: every console.error, uncaught exception, rejected promise and failed resource
# load becomes one console line with CONSOLE_MARK (Chromium's stderr log does not tell levels apart).
CONSOLE_HOOK = """<script>(function () {
  var mark = "%s ", error = console.error.bind(console);
  console.error = function () { console.log(mark + Array.prototype.map.call(arguments, String).join(" "));
                                error.apply(null, arguments); };
  window.addEventListener("error", function (e) {
    console.log(mark + (e.message || "resource failed: " + (e.target && (e.target.src || e.target.href))));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { console.log(mark + "rejection: " + e.reason); });
})();</script>""" % CONSOLE_MARK


def _chromium() -> str:
    """The chromium binary; installed from Debian (apt-get) when absent, skipped only if that fails."""
    found = shutil.which("chromium")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        install = subprocess.run([apt, "install", "-y", "-qq", "chromium"], capture_output=True, text=True, env=env)
        if install.returncode != 0:  # stale package lists: update once, then retry
            subprocess.run([apt, "update", "-qq"], capture_output=True, text=True, env=env)
            install = subprocess.run([apt, "install", "-y", "-qq", "chromium"], capture_output=True, text=True,
                                     env=env)
        found = shutil.which("chromium")
        if found:
            return found
        pytest.skip(f"Debian chromium could not be installed: {install.stderr[-500:]}")
    pytest.skip("chromium is not installed and apt-get is not available")


def _render(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
               "--window-size=1400,1000", "--virtual-time-budget=15000", *extra, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.mark.e2e
def test_report_renders_in_headless_chromium(built_report, tmp_path):
    chromium = _chromium()
    page = tmp_path / "report.html"
    page.write_text(built_report["path"].read_text(encoding="utf-8").replace("<head>", "<head>" + CONSOLE_HOOK, 1),
                    encoding="utf-8")
    screenshot = tmp_path / "report.png"
    shot = _render(chromium, page, tmp_path / "profile", f"--screenshot={screenshot}")
    dom = _render(chromium, page, tmp_path / "profile", "--dump-dom")
    console = [line for line in (shot.stderr + dom.stderr).splitlines() if "CONSOLE" in line]
    errors = [line for line in console if CONSOLE_MARK in line or '"Uncaught' in line]
    assert not errors, "console errors:\n" + "\n".join(errors)
    assert screenshot.exists(), shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        grey = image.convert("L")
        assert ImageStat.Stat(grey).stddev[0] > 10, "blank screenshot"
        assert len(grey.getcolors(maxcolors=256 * 256) or range(257)) > 16, "screenshot has almost no detail"
    # React rendered the app: the workflow description and the category menu are text of the live DOM
    text = _visible_text(dom.stdout)
    assert "the Cytologia white-blood-cell method" in text
    for category in CATEGORIES:
        assert category in text, category


class _TextParser(HTMLParser):
    """Text of a page outside <script> and <style> (what the app rendered, not its data)."""

    def __init__(self):
        super().__init__()
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._hidden -= tag in ("script", "style") and self._hidden > 0

    def handle_data(self, data):
        if not self._hidden:
            self.parts.append(data)


def _visible_text(page: str) -> str:
    parser = _TextParser()
    parser.feed(page)
    return " ".join(" ".join(parser.parts).split())


# ----------------------------------------------------------------------------- rule entries (called as functions)

def test_collect_metrics_writes_the_headline_of_each_stage(tmp_path):
    from leukoflow.engine.runtime import read_json, write_json
    from leukoflow.report import collect_metrics

    write_json(tmp_path / "ingest.json", {"rows_in": 10, "rows_kept": 9, "seconds": 1.0})
    write_json(tmp_path / "submission.json", {"rows": 5, "score": 0.5, "macro_f1": 0.4})
    target = tmp_path / "metrics.json"
    returned = collect_metrics(ingest=str(tmp_path / "ingest.json"), submission=str(tmp_path / "submission.json"),
                               metrics=str(target))
    assert read_json(target) == returned == {"ingest": {"rows_in": 10, "rows_kept": 9},
                                             "submission": {"rows": 5, "score": 0.5, "macro_f1": 0.4},
                                             "score": 0.5, "macro_f1": 0.4}
    with pytest.raises(ValueError, match="name no stage"):
        collect_metrics(ingestion=str(tmp_path / "ingest.json"), metrics=str(target))


def test_tabulate_runtimes_and_scores_entries_write_pages(tmp_path, monkeypatch):
    from leukoflow.report import tabulate_runtimes, tabulate_scores

    monkeypatch.chdir(tmp_path)
    paths = [str(_benchmark(Path("benchmarks") / "ingest.tsv", 3.0))]
    assert tabulate_runtimes(benchmarks=paths, table="runtimes.html") == {"benchmarked_jobs": 1}
    assert "<td>ingest</td>" in Path("runtimes.html").read_text()
    Path("metrics.json").write_text(json.dumps({"score": 0.25, "ingest": {"rows_in": 3}}))
    assert tabulate_scores(metrics="metrics.json", table="scores.html") == {}
    assert "rows_in" in Path("scores.html").read_text()


def test_tabulate_software_entry_reads_the_commit_beside_the_lock(tmp_path):
    from leukoflow.report import tabulate_software

    lock = tmp_path / "requirements.lock"
    lock.write_text("pandas==2\n")
    tabulate_software(run_metrics="unused.json", lock=str(lock), table=str(tmp_path / "software.html"),
                      packages=["pandas", "no-such-package-xyz"])
    page = (tmp_path / "software.html").read_text()
    assert "not installed" in page and run_tables.UNKNOWN in page  # tmp_path is no git checkout


def test_report_entries_from_stage_tables(tmp_path):
    from leukoflow.report import plot_detector_oof, plot_per_class_f1, tabulate_ensemble_weights, tabulate_ledger

    boxes, oof = _boxes_and_oof(1.0)
    tables.write_table(boxes, tmp_path / "boxes.parquet", tables.CURATED_BOXES)
    tables.write_table(oof, tmp_path / "oof.parquet", tables.OOF_BOXES)
    (tmp_path / "fit.json").write_text(json.dumps({"per_fold": {"0": {"map50": 0.5, "map50_95": 0.2}}}))
    summary = plot_detector_oof(oof=[str(tmp_path / "oof.parquet")], summaries=[str(tmp_path / "fit.json")],
                                boxes=str(tmp_path / "boxes.parquet"), plot=str(tmp_path / "det.png"),
                                table=str(tmp_path / "det.html"), detectors=["det1"], bins=8)
    assert 0 < summary["det1_mean_giou"] < 1 and (tmp_path / "det.png").read_bytes().startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="2 detectors"):
        plot_detector_oof(oof=[str(tmp_path / "oof.parquet")], summaries=[str(tmp_path / "fit.json")],
                          boxes=str(tmp_path / "boxes.parquet"), plot="x.png", table="x.html",
                          detectors=["det1", "det2"], bins=8)
    (tmp_path / "cls.json").write_text(json.dumps({"models": {"mc": {"per_class_f1": {"LY": {"f1": 1, "support": 2}}}}}))
    assert plot_per_class_f1(classification_summary=str(tmp_path / "cls.json"), plot=str(tmp_path / "f1.png")) == {
        "models": 1}
    (tmp_path / "w.json").write_text(json.dumps({"scheme": "best"}))
    (tmp_path / "e.json").write_text(json.dumps({"weights": {"weights": {"mc": 1.0}, "alpha": 0.5}, "best_oof": 0.5}))
    tabulate_ensemble_weights(weights=str(tmp_path / "w.json"), ensemble_summary=str(tmp_path / "e.json"),
                              table=str(tmp_path / "e.html"))
    assert "alpha" in (tmp_path / "e.html").read_text()
    ledger = _ledger([("ingest", "train.csv", 1, "a.jpg", "NAME", "quarantined", "image_unreadable", "")])
    tables.write_table(ledger, tmp_path / "ledger.csv", tables.LEDGER)
    assert tabulate_ledger(ledgers=[str(tmp_path / "ledger.csv")], table=str(tmp_path / "l.html")) == {
        "ledger_entries": 1}
