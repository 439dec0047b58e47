from leukoflow.curation import folds
from leukoflow import tables
from leukoflow.engine.runtime import run_rule


def run(smk):
    fold_table, balance, summary = folds.make_folds(
        tables.read_table(smk.input.images, tables.CURATED_IMAGES),
        tables.read_table(smk.input.boxes, tables.CURATED_BOXES),
        n_folds=smk.params.n_folds,
        seed=smk.params.seed,
        bins=smk.params.bins,
    )
    tables.write_table(fold_table, smk.output.folds, tables.FOLDS)
    balance.to_csv(smk.output.balance, index=False)
    folds.plot_fold_balance(balance, smk.output.plot)
    return summary


run_rule(snakemake, run)
