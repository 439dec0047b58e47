"""Figures and tables of the Snakemake report (`snakemake --report results/report.html`).

Each stage already leaves its own products (fold balance, noisy-box and background galleries,
confusion matrices, the Optuna history); this module makes the items still missing from the
stage tables: the dataset overview, the data-quality ledger summary, duplicate-group examples,
the detector OOF GIoU histogram with mAP per fold, per-class F1, the ensemble weights, the final
scores, the software versions and the runtime of every benchmarked job.

Figures are drawn on `matplotlib.figure.Figure` (the Agg canvas, no display, no pyplot state);
tables are written as small self-contained HTML pages, which the report shows inline. Every
sampling takes a seed. Nothing here reads the network.
"""

from __future__ import annotations

import html
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from leukoflow.constants import CLASSES
from leukoflow.report.headline import HEADLINE_KEYS
from leukoflow.engine.runtime import read_json
from leukoflow.engine.tracking import git_state, installed_versions

UNKNOWN = "unknown"
STAGE_ORDER = tuple(HEADLINE_KEYS)  # stages of results/metrics.json in workflow order
BENCHMARK_ROOT = "benchmarks"  # the rules' `benchmark:` files: benchmarks/<rule>[/<wildcards>].tsv
# Columns of a Snakemake `benchmark:` TSV kept in the runtime table (the file has more).
BENCHMARK_COLUMNS = {"s": "seconds", "max_rss": "max_rss_mb", "cpu_time": "cpu_seconds", "mean_load": "mean_load"}
TABLE_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 12px; color: #222; }
h2 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


# ----------------------------------------------------------------------------- tables as HTML

def html_tables(sections: Mapping[str, pd.DataFrame], title: str) -> str:
    """One self-contained HTML page: a heading and a table per section (numbers right-aligned)."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{TABLE_STYLE}</style></head><body>", f"<h1 style=\"font-size:17px\">{html.escape(title)}</h1>"]
    for heading, frame in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_html_table(frame) if len(frame) else "<p><em>none</em></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for value in values:
            numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            text = _format(value)
            cells.append(f"<td class=\"num\">{text}</td>" if numeric else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.6g}"
    return str(value)


def write_html(sections: Mapping[str, pd.DataFrame], path: str | Path, title: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_tables(sections, title), encoding="utf-8")


def _save(figure: Figure, path: str | Path, dpi: int = 100) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, metadata={"Software": None})


# ----------------------------------------------------------------------------- dataset overview

def class_distribution(boxes: pd.DataFrame) -> pd.Series:
    """Annotated cells per class code (INGEST_BOXES rows not quarantined), in CLASSES order."""
    usable = boxes[boxes["status"] != "quarantined"]
    return usable["label"].value_counts().reindex(list(CLASSES), fill_value=0).rename("cells")


def cells_per_image(names: pd.Series) -> pd.Series:
    """How many images have k cells: index k, value images (one `names` entry per cell)."""
    counts = names.value_counts()
    return counts.value_counts().sort_index().rename("images")


def plot_dataset_overview(images: pd.DataFrame, boxes: pd.DataFrame, test: pd.DataFrame, path: str | Path) -> None:
    """Class distribution, cells per image (train annotations, test.csv rows) and image sizes."""
    figure = Figure(figsize=(14, 4.2), layout="constrained")
    by_class, per_image, sizes = figure.subplots(1, 3, width_ratios=(2.2, 1, 1))
    classes = class_distribution(boxes)
    by_class.bar(classes.index, classes.to_numpy(), color="tab:blue")
    by_class.set_xticks(range(len(classes)), classes.index, rotation=70, fontsize=8)
    by_class.set_ylabel("annotated cells")
    by_class.set_title(f"class distribution ({int(classes.sum())} train cells)", fontsize=10)
    usable_boxes = boxes[boxes["status"] != "quarantined"]
    usable_test = test[test["status"] != "quarantined"]
    for offset, (label, names) in enumerate((("train", usable_boxes["name"]), ("test", usable_test["name"]))):
        counts = cells_per_image(names)
        per_image.bar(counts.index + (offset - 0.5) * 0.4, counts.to_numpy(), 0.4, label=label)
    per_image.set_xlabel("cells per image")
    per_image.set_ylabel("images")
    per_image.set_title("cells per image", fontsize=10)
    per_image.legend(fontsize=8)
    decoded = images[images["width"] > 0]
    for split, rows in decoded.groupby("split"):
        sizes.scatter(rows["width"], rows["height"], s=10, alpha=0.6, label=f"{split} ({len(rows)})")
    sizes.set_xlabel("width (px)")
    sizes.set_ylabel("height (px)")
    sizes.set_title(f"image sizes ({len(images) - len(decoded)} undecodable)", fontsize=10)
    sizes.legend(fontsize=8)
    _save(figure, path)


# ----------------------------------------------------------------------------- data-quality ledger

def ledger_summary(ledgers: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Entries and images per (stage, table, action, reason) over the stages' LEDGERs, most frequent first."""
    columns = ["stage", "table", "action", "reason"]
    frames = [frame for frame in ledgers if len(frame)]
    if not frames:
        return pd.DataFrame({**{c: pd.Series([], dtype=str) for c in columns}, "entries": pd.Series([], dtype="int64"),
                             "images": pd.Series([], dtype="int64")})
    ledger = pd.concat(frames, ignore_index=True).drop_duplicates()
    summary = ledger.groupby(columns, sort=False).agg(entries=("row", "size"), images=("name", "nunique")).reset_index()
    order = {stage: k for k, stage in enumerate(dict.fromkeys(ledger["stage"]))}
    summary = summary.assign(_order=summary["stage"].map(order))
    summary = summary.sort_values(["_order", "entries", "reason"], ascending=[True, False, True], kind="stable")
    return summary.drop(columns="_order").reset_index(drop=True)


# ----------------------------------------------------------------------------- duplicate groups

def duplicate_examples(groups: pd.DataFrame, n_groups: int, seed: int) -> pd.DataFrame:
    """Members of up to `n_groups` duplicate groups, drawn with `seed`, one group of each kind first.

    Groups of both kinds (exact, near) and a train/test one are shown when they exist, so that a
    small sample still shows every kind of finding.
    """
    if not len(groups) or n_groups <= 0:
        return groups.iloc[:0]
    rng = np.random.default_rng(seed)
    per_group = groups.groupby("group_id").agg(kind=("kind", "first"), test=("split", lambda s: (s == "test").any()))
    ids = list(per_group.index)
    shuffled = [ids[k] for k in rng.permutation(len(ids))]
    first_of = [next((g for g in shuffled if mask.loc[g]), None)
                for mask in (per_group["kind"] == "exact", per_group["kind"] == "near", per_group["test"])]
    chosen = list(dict.fromkeys([g for g in first_of if g is not None] + shuffled))[:n_groups]
    members = groups[groups["group_id"].isin(chosen)]
    return members.sort_values(["group_id", "name"], kind="stable").reset_index(drop=True)


def plot_duplicate_examples(examples: pd.DataFrame, paths: Mapping[str, str], path: str | Path, *,
                            tile_px: int) -> None:
    """One row per group: thumbnails of its members titled with name, split and role."""
    grouped = list(examples.groupby("group_id", sort=True))
    n_rows, n_cols = max(1, len(grouped)), max([len(rows) for _, rows in grouped], default=1)
    inches = tile_px / 50
    figure = Figure(figsize=(max(4.0, n_cols * inches), max(2.0, n_rows * (inches + 0.5))), layout="constrained")
    axes = np.atleast_2d(figure.subplots(n_rows, n_cols, squeeze=False))
    for axis in axes.ravel():
        axis.set_axis_off()
    if not grouped:
        axes[0, 0].text(0.5, 0.5, "no duplicate groups found", ha="center", va="center")
    for row, (group_id, members) in enumerate(grouped):
        for col, member in enumerate(members.itertuples(index=False)):
            axis = axes[row, col]
            axis.imshow(_thumbnail(paths.get(member.name), tile_px))
            axis.set_title(f"group {group_id} ({member.kind})\n{member.name}\n{member.split}: {member.role}",
                           fontsize=7)
    _save(figure, path)


def _thumbnail(path: str | None, tile_px: int) -> np.ndarray:
    """RGB thumbnail of an image file; a grey tile when the file is missing or unreadable."""
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except (OSError, TypeError, AttributeError):
        return np.full((tile_px, tile_px, 3), 200, dtype=np.uint8)
    image.thumbnail((tile_px, tile_px))
    return np.asarray(image)


# ----------------------------------------------------------------------------- detection

def oof_giou(oof: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Per annotated cell: the GIoU of its matched OOF box (official matching), with the fold.

    oof: OOF_BOXES of one detector; boxes: CURATED_BOXES. Returns columns fold, giou.
    """
    from leukoflow import metric
    from leukoflow.boxes import as_submission, truth_table

    truth = truth_table(boxes[boxes["name"].isin(set(oof["name"]))])
    if not len(truth):
        return pd.DataFrame({"fold": pd.Series([], dtype="int64"), "giou": pd.Series([], dtype="float64")})
    per_row = metric.score(truth, as_submission(oof, truth)).per_row
    fold_of = oof.drop_duplicates("name").set_index("name")["fold"]
    return pd.DataFrame({"fold": per_row["NAME"].map(fold_of).astype("int64").to_numpy(),
                         "giou": per_row["giou"].astype(float).to_numpy()})


def detector_folds(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """mAP50, mAP50-95 and mean rescaled GIoU per detector and fold, from each `fit_oof` summary."""
    rows = [{"detector": name, "fold": int(fold), "map50": entry.get("map50"), "map50_95": entry.get("map50_95"),
             "mean_rescaled_giou": entry.get("mean_rescaled_giou"), "train_seconds": entry.get("train_seconds")}
            for name, summary in summaries.items() for fold, entry in summary.get("per_fold", {}).items()]
    frame = pd.DataFrame(rows, columns=["detector", "fold", "map50", "map50_95", "mean_rescaled_giou",
                                        "train_seconds"])
    return frame.astype({c: float for c in frame.columns[2:]}).sort_values(["detector", "fold"]).reset_index(drop=True)


def plot_detector_oof(gious: Mapping[str, pd.DataFrame], folds: pd.DataFrame, path: str | Path, *,
                      bins: int) -> None:
    """Left: histogram of OOF GIoU per detector; right: mAP50 / mAP50-95 per detector and fold."""
    figure = Figure(figsize=(12, 4.2), layout="constrained")
    histogram, bars = figure.subplots(1, 2)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for name, frame in gious.items():
        histogram.hist(frame["giou"], bins=edges, histtype="step", linewidth=1.5,
                       label=f"{name} (n={len(frame)}, mean {frame['giou'].mean():.3f})")
    histogram.set_xlabel("GIoU of the matched OOF box")
    histogram.set_ylabel("annotated cells")
    histogram.set_title("detector OOF GIoU", fontsize=10)
    histogram.legend(fontsize=8, loc="upper left")
    labels = [f"{row.detector}\nfold {row.fold}" for row in folds.itertuples(index=False)]
    positions = np.arange(len(folds))
    bars.bar(positions - 0.2, folds["map50"].fillna(0.0), 0.4, label="mAP50")
    bars.bar(positions + 0.2, folds["map50_95"].fillna(0.0), 0.4, label="mAP50-95")
    bars.set_xticks(positions, labels, fontsize=8)
    bars.set_ylim(0.0, 1.0)
    bars.set_ylabel("validation mAP (last epoch)")
    bars.set_title("mAP per fold", fontsize=10)
    bars.legend(fontsize=8)
    _save(figure, path)


# ----------------------------------------------------------------------------- classification

def per_class_f1(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Long table model, class, f1, support from the classification summary's `per_class_f1`."""
    rows = [{"model": model, "class": name, "f1": float(entry["f1"]), "support": int(entry["support"])}
            for model, result in summary.get("models", {}).items()
            for name, entry in result.get("per_class_f1", {}).items()]
    return pd.DataFrame(rows, columns=["model", "class", "f1", "support"])


def plot_per_class_f1(frame: pd.DataFrame, path: str | Path) -> None:
    """Grouped bars: OOF F1 of every class (CLASSES order, then any other output) for each model."""
    order = [c for c in CLASSES if c in set(frame["class"])] + sorted(set(frame["class"]) - set(CLASSES))
    models = list(dict.fromkeys(frame["model"]))
    figure = Figure(figsize=(14, 4.5), layout="constrained")
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(models), 1)
    for k, model in enumerate(models):
        scores = frame[frame["model"] == model].set_index("class")["f1"].reindex(order)
        axis.bar(np.arange(len(order)) + (k - (len(models) - 1) / 2) * width, scores.fillna(0.0), width, label=model)
    support = frame.groupby("class")["support"].max().reindex(order).fillna(0).astype(int)
    axis.set_xticks(range(len(order)), [f"{c}\n({n})" for c, n in support.items()], fontsize=7)
    axis.set_ylim(0, 1)
    axis.set_ylabel("OOF F1")
    axis.set_title("per-class OOF F1 (class, support)", fontsize=10)
    axis.legend(fontsize=8)
    _save(figure, path)


# ----------------------------------------------------------------------------- ensemble and scores

def ensemble_tables(weights: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The applied scheme's weights (with the winner scheme's beside them) and each scheme's OOF score."""
    applied, winner = summary.get("weights", {}), summary.get("winner_weights", {})
    models = list(dict.fromkeys([*applied.get("weights", {}), *winner.get("weights", {})]))
    table = pd.DataFrame({
        "model": models + ["alpha (single-cell multiclass share)"],
        "searched": [applied.get("weights", {}).get(m, np.nan) for m in models] + [applied.get("alpha", np.nan)],
        "winner scheme": [winner.get("weights", {}).get(m, np.nan) for m in models] + [winner.get("alpha", np.nan)],
    })
    schemes = {"searched (best)": summary.get("best_oof"), "equal weights": summary.get("equal_weights_oof"),
               "winner scheme": summary.get("winner_scheme_oof"),
               f"best single model ({summary.get('best_single_model', '')})": summary.get("best_single_model_oof"),
               "nested estimate (unbiased)": summary.get("nested_estimate")}
    scores = pd.DataFrame({"scheme": list(schemes),
                           "oof": [np.nan if v is None else float(v) for v in schemes.values()]})
    facts = pd.DataFrame({"setting": ["applied to test", "objective", "completed trials", "study"],
                          "value": [str(weights.get("scheme", summary.get("applied", ""))),
                                    str(summary.get("objective", "")), str(summary.get("n_trials", "")),
                                    str(weights.get("study", summary.get("study", "")))]})
    return {"weights": table, f"OOF objective per scheme ({summary.get('objective', '')})": scores, "search": facts}


def final_scores(metrics: Mapping[str, Any]) -> dict[str, pd.DataFrame]:
    """The official score (when test truth exists) and every stage's headline figure from metrics.json."""
    top = [(key, metrics[key]) for key in ("score", "mean_rescaled_giou", "macro_f1") if key in metrics]
    headline = pd.DataFrame({"figure": [k for k, _ in top], "value": [float(v) for _, v in top]})
    stages = sorted((stage for stage, figures in metrics.items() if isinstance(figures, Mapping)),
                    key=lambda stage: (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage))
    rows = [(stage, key, value) for stage in stages for key, value in _flat(metrics[stage])]
    stages = pd.DataFrame({"stage": [r[0] for r in rows], "figure": [r[1] for r in rows],
                           "value": [_scalar(r[2]) for r in rows]})
    return {"official score of the submission": headline, "headline figures per stage": stages}


def _flat(figures: Mapping[str, Any], prefix: str = ""):
    """(key, value) pairs of a nested summary, nested keys joined with '.'."""
    for key, value in figures.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _scalar(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return float(value)


# ----------------------------------------------------------------------------- software and runtimes

def package_versions(names: Sequence[str]) -> pd.DataFrame:
    """Installed version of each distribution, 'not installed' when absent."""
    versions = installed_versions(names)
    return pd.DataFrame({"package": list(versions), "version": list(versions.values())})


def git_commit(directory: str | Path = ".") -> str:
    """HEAD of the checkout holding `directory` (+ '-dirty' with local changes, as the MLflow tags), else unknown."""
    commit, dirty = git_state(Path(directory))
    return f"{commit}-dirty" if dirty == "true" else commit


def torch_build() -> dict[str, str]:
    """torch version, the CUDA it was built with and the visible GPU (each 'unknown' without torch)."""
    try:
        import torch
    except ImportError:
        return {"torch": UNKNOWN, "torch CUDA build": UNKNOWN, "CUDA device": UNKNOWN}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible"
    return {"torch": torch.__version__, "torch CUDA build": torch.version.cuda or "none (CPU build)",
            "CUDA device": device}


def software_tables(packages: Sequence[str], *, repository: str | Path) -> dict[str, pd.DataFrame]:
    environment = {"python": platform.python_version(), "platform": platform.platform(),
                   **torch_build(), "git commit": git_commit(repository)}
    return {"environment": pd.DataFrame({"component": list(environment), "version": list(environment.values())}),
            "python packages": package_versions(packages)}


def read_benchmark(path: str | Path, root: str | Path = BENCHMARK_ROOT) -> pd.DataFrame:
    """One Snakemake benchmark TSV as rows rule, job, seconds, max_rss_mb, cpu_seconds, mean_load.

    The rule is the first folder below `root` (or the file stem), the job the rest of the path.
    """
    relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(Path(path).name)
    rule = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    job = str(relative.with_suffix("").relative_to(rule)) if len(relative.parts) > 1 else ""
    frame = pd.read_csv(path, sep="\t", na_values=["-", "NA"])
    out = pd.DataFrame({"rule": rule, "job": job, "repeat": np.arange(len(frame))})
    for column, name in BENCHMARK_COLUMNS.items():
        out[name] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    return out


def runtime_tables(paths: Sequence[str | Path], root: str | Path = BENCHMARK_ROOT) -> dict[str, pd.DataFrame]:
    """Seconds per rule (jobs, total, longest job, peak memory) and per job, from benchmark TSVs."""
    jobs = (pd.concat([read_benchmark(p, root) for p in paths], ignore_index=True) if paths else
            pd.DataFrame(columns=["rule", "job", "repeat", *BENCHMARK_COLUMNS.values()]))
    jobs = jobs.astype({name: float for name in BENCHMARK_COLUMNS.values()})
    per_rule = jobs.groupby("rule", sort=False).agg(
        jobs=("seconds", "size"), total_seconds=("seconds", "sum"), longest_job_seconds=("seconds", "max"),
        peak_rss_mb=("max_rss_mb", "max")).reset_index()
    per_rule = per_rule.sort_values("total_seconds", ascending=False, kind="stable").reset_index(drop=True)
    total = pd.DataFrame({"rule": ["all benchmarked jobs"], "jobs": [len(jobs)],
                          "total_seconds": [jobs["seconds"].sum()], "longest_job_seconds": [jobs["seconds"].max()],
                          "peak_rss_mb": [jobs["max_rss_mb"].max()]})
    per_job = jobs.drop(columns="repeat").sort_values(["rule", "job"], kind="stable").reset_index(drop=True)
    return {"per rule": pd.concat([per_rule, total], ignore_index=True), "per job": per_job}


# ----------------------------------------------------------------------------- rule entries (paths in, summary out)

def dataset_overview(*, images: str, boxes: str, test: str, plot: str) -> dict[str, Any]:
    """Rule entry: the dataset overview figure from the ingest tables."""
    from leukoflow import tables

    box_table = tables.read_table(boxes, tables.INGEST_BOXES)
    plot_dataset_overview(tables.read_table(images, tables.INGEST_IMAGES), box_table,
                          tables.read_table(test, tables.INGEST_TEST), plot)
    return {"classes_present": int((class_distribution(box_table) > 0).sum())}


def ledger_report(*, ledgers: Sequence[str], table: str) -> dict[str, Any]:
    """Rule entry: the data-quality ledger summary (every stage's ledger.csv) as an HTML table."""
    from leukoflow import tables

    summary = ledger_summary([tables.read_table(path, tables.LEDGER) for path in ledgers])
    write_html({"ledger entries per stage, action and reason": summary}, table, "Data-quality ledger")
    return {"ledger_entries": int(summary["entries"].sum())}


def duplicates_report(*, groups: str, images: str, plot: str, n_groups: int, seed: int,
                      tile_px: int) -> dict[str, Any]:
    """Rule entry: the montage of duplicate-group examples (image paths from the ingest table)."""
    from leukoflow import tables

    examples = duplicate_examples(tables.read_table(groups, tables.DUPLICATE_GROUPS), n_groups, seed)
    paths = tables.read_table(images, tables.INGEST_IMAGES).set_index("name")["path"].to_dict()
    plot_duplicate_examples(examples, paths, plot, tile_px=tile_px)
    return {"groups_shown": int(examples["group_id"].nunique())}


def detector_report(*, oof: Sequence[str], summaries: Sequence[str], boxes: str, plot: str, table: str,
                    detectors: Sequence[str], bins: int) -> dict[str, Any]:
    """Rule entry: OOF GIoU histogram and mAP per fold (figure), the per-fold figures (HTML)."""
    from leukoflow import tables

    box_table = tables.read_table(boxes, tables.CURATED_BOXES)
    gious = {name: oof_giou(tables.read_table(path, tables.OOF_BOXES), box_table) for name, path in zip(detectors, oof)}
    folds = detector_folds({name: read_json(path) for name, path in zip(detectors, summaries)})
    plot_detector_oof(gious, folds, plot, bins=bins)
    write_html({"validation mAP and OOF GIoU per detector and fold": folds}, table, "Detectors per fold")
    return {f"{name}_mean_giou": float(frame["giou"].mean()) for name, frame in gious.items()}


def classifier_report(*, summary: str, plot: str) -> dict[str, Any]:
    """Rule entry: per-class OOF F1 of every classifier."""
    frame = per_class_f1(read_json(summary))
    plot_per_class_f1(frame, plot)
    return {"models": int(frame["model"].nunique())}


def ensemble_report(*, weights: str, summary: str, table: str) -> dict[str, Any]:
    """Rule entry: the ensemble weights and each scheme's OOF objective as an HTML page."""
    write_html(ensemble_tables(read_json(weights), read_json(summary)), table, "Ensemble weights")
    return {}


def scores_report(*, metrics: str, table: str) -> dict[str, Any]:
    """Rule entry: the final scores (results/metrics.json) as an HTML page."""
    write_html(final_scores(read_json(metrics)), table, "Final scores")
    return {}


def software_report(*, table: str, packages: Sequence[str], repository: str, **_inputs: str) -> dict[str, Any]:
    """Rule entry: software versions (inputs only order the job after the run) as an HTML page."""
    sections = software_tables(packages, repository=repository)
    write_html(sections, table, "Software versions")
    return {}


def runtime_report(*, benchmarks: Sequence[str], table: str) -> dict[str, Any]:
    """Rule entry: runtime per rule and per job from every benchmark TSV as an HTML page."""
    sections = runtime_tables(benchmarks)
    write_html(sections, table, "Runtime per rule (benchmark files)")
    return {"benchmarked_jobs": len(benchmarks)}
