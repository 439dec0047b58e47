from leukoflow.detection import predict_oof
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, predict_oof)
