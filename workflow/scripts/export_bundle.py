from leukoflow.inference import bundle
from leukoflow.engine.runtime import run_rule


def run(smk):
    params = smk.params
    return bundle.export_bundle(
        out_dir=smk.output.bundle, detector_name=params.detector, detector_weights=list(smk.input.detector),
        detector_predict=params.detector_predict, wbf_iou=params.wbf_iou, wbf_skip=params.wbf_skip,
        margin=params.margin, classifiers=params.checkpoints, classifier_settings=params.classifier_settings,
        ensemble_weights=smk.input.weights, predict_settings=params.predict_settings,
        oof_raw=list(smk.input.oof_raw), images=smk.input.images, boxes=smk.input.boxes,
    )


run_rule(snakemake, run, tracked=True)
