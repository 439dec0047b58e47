"""The report stage: figures and tables of the Snakemake report and results/metrics.json.

Each rule of workflow/rules/report.smk is the entry of the same name here.
"""

from .dataset import plot_dataset_overview, plot_duplicate_examples, tabulate_ledger
from .headline import collect_metrics
from .models import plot_detector_oof, plot_per_class_f1, tabulate_ensemble_weights
from .run_tables import tabulate_runtimes, tabulate_scores, tabulate_software

__all__ = [
    "collect_metrics",
    "plot_dataset_overview",
    "plot_detector_oof",
    "plot_duplicate_examples",
    "plot_per_class_f1",
    "tabulate_ensemble_weights",
    "tabulate_ledger",
    "tabulate_runtimes",
    "tabulate_scores",
    "tabulate_software",
]
