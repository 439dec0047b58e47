from leukoflow.classification import train_classifier
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, train_classifier)
