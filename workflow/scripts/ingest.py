from leukoflow.ingest import ingest
from leukoflow.engine.runtime import run_rule
run_rule(snakemake, ingest)
