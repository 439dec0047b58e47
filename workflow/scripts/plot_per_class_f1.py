from leukoflow.report import plot_per_class_f1
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, plot_per_class_f1)
