from leukoflow.ingest import no_test_table
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, no_test_table)
