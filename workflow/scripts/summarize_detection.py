from leukoflow.detection import summarize_detection
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, summarize_detection)
