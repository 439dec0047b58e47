from leukoflow import noisy
from leukoflow.runtime import run_rule


def run(smk):
    return noisy.flag_noisy_boxes(**smk.input, flags=smk.output.flags, gallery=smk.output.gallery, **smk.params)


run_rule(snakemake, run)
