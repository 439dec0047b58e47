from leukoflow.report.headline import headline_metrics
from leukoflow.engine.runtime import read_json, run_rule, write_json


def run(smk):
    metrics = headline_metrics({stage: read_json(path) for stage, path in smk.input.items()})
    write_json(smk.output.metrics, metrics)
    return metrics


run_rule(snakemake, run)
