from pathlib import Path

from leukoflow.ingest import contract as ingest
from leukoflow.engine.runtime import run_rule


def run(smk):
    return ingest.ingest(
        smk.input.train_csv,
        smk.input.test_csv,
        smk.input.images,
        Path(smk.output.images).parent,
        workers=smk.threads,
        chunksize=smk.params.chunksize,
        phash_reducing_gap=smk.params.phash_reducing_gap,
        repaired_dir=smk.output.repaired,
    )


# Worker processes may be spawned and re-import this script: only the main process runs the rule.
if __name__ == "__main__":
    run_rule(snakemake, run)
