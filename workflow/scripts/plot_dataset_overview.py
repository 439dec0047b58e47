from leukoflow.report import plot_dataset_overview
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, plot_dataset_overview)
