from leukoflow import report
from leukoflow.runtime import run_rule


def run(smk):
    return report.classifier_report(**smk.input, **smk.output, **smk.params)


run_rule(snakemake, run)
