from leukoflow import detection
from leukoflow.runtime import run_rule


def run(smk):
    return detection.export_yolo(**smk.input, datasets=smk.output.datasets, **smk.params)


run_rule(snakemake, run)
