from pathlib import Path

from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.train_detector(
        dataset_yaml=Path(smk.input.datasets) / f"fold{smk.wildcards.fold}" / "dataset.yaml",
        weights_out=smk.output.weights, history_out=smk.output.history, threads=smk.threads, **smk.params)


run_rule(snakemake, run, tracked=True)
