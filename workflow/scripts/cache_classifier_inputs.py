from leukoflow.classification import crop_cache
from leukoflow import tables
from leukoflow.engine.runtime import run_rule


def run(smk):
    source = smk.wildcards.source
    inputs = smk.input
    background = smk.params.background
    return crop_cache.build_cache(
        source,
        int(smk.wildcards.size),
        smk.output.pixels,
        smk.output.index,
        images=tables.read_table(inputs.images, tables.CURATED_IMAGES),
        crops=tables.read_table(inputs.crops, tables.CROPS) if "crops" in inputs.keys() else None,
        folds=tables.read_table(inputs.folds, tables.FOLDS) if "folds" in inputs.keys() else None,
        backgrounds=tables.read_table(inputs.backgrounds, tables.BACKGROUNDS) if "backgrounds" in inputs.keys() else None,
        seed=smk.params.seed,
        threads=smk.threads,
        background_crops_per_image=background["per_image"],
        background_min_side=background["min_side"],
        background_max_side=background["max_side"],
        background_valid_side=background["valid_side"],
        background_valid_position=tuple(background["valid_position"]),
    )


run_rule(snakemake, run)
