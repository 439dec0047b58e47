from leukoflow.detection import predict_test_boxes
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, predict_test_boxes)
