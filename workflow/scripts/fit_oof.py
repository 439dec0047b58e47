from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.fit_oof(**smk.input, detector=smk.wildcards.detector, oof=smk.output.oof)


run_rule(snakemake, run, tracked=True)
