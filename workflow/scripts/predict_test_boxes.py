from leukoflow.detection import yolo as detection
from leukoflow.engine.runtime import run_rule


def run(smk):
    return detection.predict_test_boxes(**smk.input, raw=smk.output.raw, boxes=smk.output.boxes,
                                        threads=smk.threads, **smk.params)


run_rule(snakemake, run, tracked=True)
