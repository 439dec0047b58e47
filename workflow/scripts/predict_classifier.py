from leukoflow.classification import training as classification
from leukoflow.engine.runtime import run_rule


def run(smk):
    spec = classification.ClassifierSpec.from_config(smk.params.spec)
    inputs = smk.input
    truth = classification.truth_from_tables(spec, inputs)
    return classification.run_predict(
        spec,
        list(inputs.best),
        list(inputs.fold_oof),
        main_cache=(inputs.pixels, inputs.index),
        truth=truth,
        oof_path=smk.output.oof,
        test_path=smk.output.test,
        settings=classification.settings_from_config(smk.params.settings, smk.params.seed, smk.threads),
    )


run_rule(snakemake, run, tracked=True)
