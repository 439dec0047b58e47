from leukoflow.classification import training as classification
from leukoflow.engine.runtime import run_rule


def run(smk):
    spec = classification.ClassifierSpec.from_config(smk.params.spec)
    inputs = smk.input
    truth = classification.truth_from_tables(spec, inputs)
    background = (inputs.background_pixels, inputs.background_index) if spec.background else None
    return classification.run_train_fold(
        spec,
        int(smk.wildcards.fold),
        main_cache=(inputs.pixels, inputs.index),
        truth=truth,
        background_cache=background,
        out_dir=smk.params.out_dir,
        oof_path=smk.output.oof,
        settings=classification.settings_from_config(smk.params.settings, smk.params.seed, smk.threads),
    )


run_rule(snakemake, run, tracked=True)
