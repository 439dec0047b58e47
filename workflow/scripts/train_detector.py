from leukoflow.detection import train_detector
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, train_detector)
