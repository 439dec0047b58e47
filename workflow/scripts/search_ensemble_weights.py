from leukoflow.ensemble import search as ensemble
from leukoflow.engine.runtime import run_rule


def run(smk):
    settings, inputs, output = smk.params.settings, smk.input, smk.output
    objective_inputs = {key: getattr(inputs, key) for key in ("oof_boxes", "crops", "boxes") if key in inputs.keys()}
    return ensemble.run_search(
        multiclass_oof=dict(zip(smk.params.multiclass, inputs.mc_oof)),
        multilabel_oof=dict(zip(smk.params.multilabel, inputs.ml_oof)),
        multiclass_test=dict(zip(smk.params.multiclass, inputs.mc_test)),
        multilabel_test=dict(zip(smk.params.multilabel, inputs.ml_test)),
        weights_out=output.weights, oof_classes_out=output.oof_classes, test_classes_out=output.test_classes,
        trials_out=output.trials, plot_out=output.plot, storage=smk.params.storage,
        margin=smk.params.margin, seed=smk.params.seed, **objective_inputs, **settings,
    )


run_rule(snakemake, run, tracked=True)
