from leukoflow.ingest import hold_out_test
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, hold_out_test)
