from leukoflow.detection import export_yolo
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, export_yolo)
