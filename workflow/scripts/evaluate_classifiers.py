from leukoflow.classification import evaluate_classifiers
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, evaluate_classifiers)
