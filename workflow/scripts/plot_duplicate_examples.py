from leukoflow.report import plot_duplicate_examples
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, plot_duplicate_examples)
