from leukoflow.report import plot_detector_oof
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, plot_detector_oof)
