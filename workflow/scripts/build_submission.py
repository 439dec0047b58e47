from leukoflow.ensemble import submission
from leukoflow.engine.runtime import run_rule


def run(smk):
    inputs = smk.input
    return submission.build_submission(
        test=inputs.test, test_boxes=inputs.test_boxes, classes=inputs.classes, weights=inputs.weights,
        submission_out=smk.output.submission, truth_csv=inputs.truth[0] if len(inputs.truth) else None,
    )


run_rule(snakemake, run, tracked=True)
