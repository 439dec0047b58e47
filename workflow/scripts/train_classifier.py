from leukoflow import classification, tables
from leukoflow.runtime import run_rule


def run(smk):
    spec = classification.ClassifierSpec.from_config(smk.params.spec)
    inputs = smk.input
    truth = classification.truth_for(
        spec,
        crops=tables.read_table(inputs.crops, tables.CROPS) if "crops" in inputs.keys() else None,
        boxes=tables.read_table(inputs.boxes, tables.CURATED_BOXES) if "boxes" in inputs.keys() else None,
        folds=tables.read_table(inputs.folds, tables.FOLDS) if "folds" in inputs.keys() else None,
    )
    background = (inputs.background_pixels, inputs.background_index) if spec.background else None
    return classification.run_train_fold(
        spec,
        int(smk.wildcards.fold),
        main_cache=(inputs.pixels, inputs.index),
        truth=truth,
        background_cache=background,
        out_dir=smk.params.out_dir,
        oof_path=smk.output.oof,
        settings=classification.settings_from_config(smk.params.settings, smk.params.seed),
    )


run_rule(snakemake, run, tracked=True)
