from leukoflow.detection import crops
from leukoflow.engine.runtime import run_rule


def run(smk):
    return crops.make_crops(**smk.input, crops=smk.output.crops, **smk.params)


run_rule(snakemake, run)
