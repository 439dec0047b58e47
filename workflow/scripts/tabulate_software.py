from leukoflow.report import figures as report
from leukoflow.engine.runtime import run_rule


def run(smk):
    return report.software_report(**smk.input, **smk.output, **smk.params)


run_rule(snakemake, run)
