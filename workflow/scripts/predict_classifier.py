from leukoflow.classification import predict_classifier
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, predict_classifier)
