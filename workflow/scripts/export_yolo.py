from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.export_yolo(**smk.input, datasets=smk.output.datasets, **smk.params)


run_rule(snakemake, run)
