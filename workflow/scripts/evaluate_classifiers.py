from leukoflow.classification import training as classification
from leukoflow.engine.runtime import read_json, run_rule


def run(smk):
    models = {
        name: {
            "spec": spec,
            "oof": oof,
            "test": test,
            "folds": [read_json(path) for path in smk.params.fold_summaries[name]],
        }
        for name, spec, oof, test in zip(smk.params.names, smk.params.specs, smk.input.oof, smk.input.test)
    }
    return classification.run_evaluate(models, smk.output.confusion)


run_rule(snakemake, run, tracked=True)
