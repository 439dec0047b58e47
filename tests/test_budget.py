"""The GPU-hour budget: the job graph read from Snakemake, costs from the config, scheduling on N GPUs."""

from __future__ import annotations

import pytest

from leukoflow.engine import budget

CHALLENGE = budget.REPO / "config" / "cytologia.yaml"

DOT = """digraph snakemake_dag {
	0[label = "all", color = "0.00 0.6 0.85", style="rounded"];
	1[label = "export_yolo\\ndetector: det1", color = "0.14 0.6 0.85", style="rounded"];
	2[label = "train_detector\\nfold: 0", color = "0.65 0.6 0.85", style="rounded"];
	3[label = "train_detector\\nfold: 1", color = "0.65 0.6 0.85", style="rounded"];
	4[label = "predict_oof", color = "0.39 0.6 0.85", style="rounded"];
	1 -> 2
	1 -> 3
	2 -> 4
	4 -> 0
	3 -> 0
}"""


def test_labels_are_completed_with_the_wildcards_of_the_jobs_they_need():
    jobs = budget.parse_dot(DOT)
    assert jobs["2"].wildcards == {"detector": "det1", "fold": "0"}
    assert jobs["4"].wildcards == {"detector": "det1", "fold": "0"}
    assert jobs["0"].wildcards == {"detector": "det1"}  # folds disagree: not inherited
    assert jobs["4"].needs == {"2"}


def _chain(hours: dict[str, float], needs: dict[str, set[str]]) -> dict[str, budget.Job]:
    return {key: budget.Job(key, key, {}, needs.get(key, set()), gpu_hours=h) for key, h in hours.items()}


def test_independent_folds_spread_over_gpus_and_the_chain_bounds_the_wall_time():
    jobs = _chain({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 2.0}, {"e": {"a", "b", "c", "d"}})
    assert budget.makespan(jobs, 1) == pytest.approx(6.0)
    assert budget.makespan(jobs, 4) == pytest.approx(3.0)
    assert budget.makespan(jobs, 8) == pytest.approx(3.0)
    assert budget.critical_path(jobs) == pytest.approx(3.0)


def test_cpu_jobs_cost_no_gpu_time_but_keep_the_order():
    jobs = _chain({"prep": 0.0, "train": 2.0, "gather": 0.0, "final": 1.0},
                  {"train": {"prep"}, "gather": {"train"}, "final": {"gather"}})
    assert budget.makespan(jobs, 2) == pytest.approx(3.0)


CONFIG = {
    "folds": {"n_folds": 4},
    "detection": {"test_detector": "det1"},
    "detectors": {
        "det1": {"clean": False, "train": {"imgsz": 512, "epochs": 150, "val": False}, "predict": {"imgsz": 512}},
        "det2": {"clean": True, "train": {"imgsz": 512, "epochs": 150, "val": False}, "predict": {"imgsz": 512}},
    },
    "classifiers": {"models": [
        {"name": "small", "backbone": "tf_efficientnetv2_m.in21k", "img_size": 256, "epochs": 10, "tta": "none"},
        {"name": "big", "backbone": "tf_efficientnetv2_m.in21k", "img_size": 512, "epochs": 10, "tta": "none"},
    ]},
}


def _costed(rule: str, **wildcards: str) -> float:
    jobs = {"1": budget.Job("1", rule, dict(wildcards), set())}
    budget.cost_jobs(jobs, CONFIG)
    return jobs["1"].gpu_hours


def test_the_winner_detector_costs_the_winner_time():
    # 150 epochs over the three training folds at the reference throughput: ~80 h for 4 folds
    assert 4 * _costed("train_detector", detector="det1", fold="0") == pytest.approx(80.0, rel=0.01)


def test_backgrounds_make_the_clean_detector_dearer_and_size_makes_classifiers_dearer():
    assert _costed("train_detector", detector="det2", fold="0") > _costed("train_detector", detector="det1", fold="0")
    assert _costed("train_classifier", model="big", fold="0") == pytest.approx(
        4 * _costed("train_classifier", model="small", fold="0"))
    assert _costed("make_folds") == 0.0


def test_missing_inputs_are_read_from_snakemakes_message():
    log = ("MissingInputException in rule train_classifier:\nMissing input files for rule x:\n"
           "    output: a\n    affected files:\n        weights/a.safetensors\n        data/train.csv\nnext")
    assert budget.missing_inputs(log) == ["weights/a.safetensors", "data/train.csv"]


def test_block_replacement_keeps_the_rest_of_the_page():
    page = f"intro\n{budget.BEGIN}\nold\n{budget.END}\noutro\n"
    assert budget.replace_block(page, "new") == f"intro\n{budget.BEGIN}\nnew\n{budget.END}\noutro\n"
    with pytest.raises(ValueError):
        budget.replace_block("no markers", "new")


@pytest.fixture(scope="module")
def challenge_plan() -> dict[str, budget.Job]:
    """Snakemake's plan of config/cytologia.yaml, costed (one planning for the tests below)."""
    return budget.costed_plan(CHALLENGE)


@pytest.mark.e2e
def test_the_challenge_configuration_is_planned_and_costed(challenge_plan):
    jobs = challenge_plan
    trained = [job for job in jobs.values() if job.rule == "train_detector"]
    assert trained and all(job.gpu_hours > 0 for job in trained)
    assert budget.makespan(jobs, 4) < budget.makespan(jobs, 1)
    assert budget.critical_path(jobs) <= budget.makespan(jobs, 8) + 1e-9


@pytest.mark.e2e
def test_the_budget_in_docs_hardware_is_current(challenge_plan, monkeypatch):
    monkeypatch.setattr(budget, "costed_plan", lambda configfile: challenge_plan)
    page = budget.REPO / "docs" / "hardware.md"
    assert budget.main(["--configfile", str(CHALLENGE), "--write", str(page),
                        "--check"]) == 0, "run: python -m leukoflow.engine.budget --write docs/hardware.md"
