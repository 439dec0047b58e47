from pathlib import Path

from leukoflow.ingest.holdout import hold_out_test
from leukoflow.engine.runtime import run_rule


def run(smk):
    return hold_out_test(
        smk.input.train_csv, Path(smk.output.train_csv).parent, fraction=smk.params.fraction, seed=smk.params.seed
    )


run_rule(snakemake, run)
