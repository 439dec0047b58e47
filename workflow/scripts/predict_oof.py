from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.predict_oof(**smk.input, fold=smk.wildcards.fold, detector=smk.wildcards.detector,
                                 raw=smk.output.raw, threads=smk.threads, **smk.params)


run_rule(snakemake, run, tracked=True)
