from leukoflow.detection import backgrounds
from leukoflow.engine.runtime import run_rule


def run(smk):
    return backgrounds.make_backgrounds(**smk.input, table=smk.output.table, out_dir=smk.output.images,
                                        gallery=smk.output.gallery, **smk.params)


run_rule(snakemake, run)
