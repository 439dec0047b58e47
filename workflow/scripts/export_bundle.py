from leukoflow.inference import export_bundle
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, export_bundle)
