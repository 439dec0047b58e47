# leukoflow: the Cytologia white-blood-cell method as one workflow.
#
# results/ layout (one folder per stage, each with summary.json):
#   synthetic/   the generated demo dataset (data.source: synthetic)
#   ingest/      decoded image table, box/test tables, data-quality ledger
#   curation/    duplicate groups, repaired boxes, folds, fold balance
#   metrics.json headline figures of the run
#   report/      figures and tables of the Snakemake report (snakemake --report results/report.html)
import os
import sys

from snakemake.utils import min_version

sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))

from leukoflow.engine.config import validate_config
from leukoflow.engine.recovery import clear_stale_locks

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate_config(config, os.path.join(workflow.basedir, "config", "schema.yaml"))
clear_stale_locks()  # after kill -9 the README command recovers without --unlock


report: "workflow/report/workflow.rst"


# Software environment of every job with `--sdm apptainer` (docs/hpc.md, "Containers"): the image
# built from Dockerfile / leukoflow.def, both installing requirements.lock. A site points this at
# its own copy, e.g. LEUKOFLOW_CONTAINER=/shared/images/leukoflow-0.1.0.sif.
container: os.environ.get("LEUKOFLOW_CONTAINER", "docker://ghcr.io/leukoflow/leukoflow:0.1.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/curation.smk"
include: "workflow/rules/detection.smk"
include: "workflow/rules/classification.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/inference.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/ingest/summary.json",
        "results/curation/summary.json",
        "results/curation/fold_balance.png",
        "results/detection/summary.json",
        "results/crops/crops.parquet",
        "results/classification/summary.json",
        "results/classification/confusion.png",
        "results/ensemble/summary.json",
        "results/submission.csv",
        "results/bundle",
        "results/metrics.json",
        "results/report/dataset_overview.png",
        "results/report/ledger_summary.html",
        "results/report/duplicate_examples.png",
        "results/report/detector_oof.png",
        "results/report/per_class_f1.png",
        "results/report/ensemble_weights.html",
        "results/report/scores.html",
        "results/report/software.html",
        "results/report/runtimes.html",
