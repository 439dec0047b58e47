from leukoflow.detection import noisy
from leukoflow.engine.runtime import run_rule


def run(smk):
    return noisy.flag_noisy_boxes(**smk.input, flags=smk.output.flags, gallery=smk.output.gallery, **smk.params)


run_rule(snakemake, run)
