from leukoflow.classification import training as classification
from leukoflow import tables
from leukoflow.engine.runtime import run_rule


def run(smk):
    crops = classification.crops_from_ground_truth(
        tables.read_table(smk.input.boxes, tables.CURATED_BOXES),
        tables.read_table(smk.input.folds, tables.FOLDS),
        tables.read_table(smk.input.images, tables.CURATED_IMAGES),
        margin=smk.params.margin,
    )
    tables.write_table(crops, smk.output.crops, tables.CROPS)
    return {"crops": len(crops), "source": "ground_truth", "margin": smk.params.margin}


run_rule(snakemake, run)
