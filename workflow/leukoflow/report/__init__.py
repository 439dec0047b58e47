"""The report stage: figures and tables of the Snakemake report and results/metrics.json.

Each rule of workflow/rules/report.smk is the entry of the same name here, imported on first use
(`leukoflow.engine.lazy`).
"""

from leukoflow.engine.lazy import lazy_entries

ENTRY_MODULES = {
    "collect_metrics": "headline",
    "plot_dataset_overview": "dataset",
    "plot_detector_oof": "models",
    "plot_duplicate_examples": "dataset",
    "plot_per_class_f1": "models",
    "tabulate_ensemble_weights": "models",
    "tabulate_ledger": "dataset",
    "tabulate_runtimes": "run_tables",
    "tabulate_scores": "run_tables",
    "tabulate_software": "run_tables",
}
__all__ = sorted(ENTRY_MODULES)
__getattr__, __dir__ = lazy_entries(__name__, ENTRY_MODULES)
