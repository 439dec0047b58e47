from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.summarize_detection(**smk.input, detector_names=smk.params.detectors,
                                         test_detector=smk.params.test_detector)


run_rule(snakemake, run, tracked=True)
