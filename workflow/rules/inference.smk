# Inference: the model bundle that `leukoflow predict` loads (results/bundle/: safetensors weights,
# a model card and a checksum manifest).


rule export_bundle:
    input:
        detector_weights=expand(
            rules.train_detector.output.weights,
            detector=TEST_DETECTOR,
            fold=DETECTION_FOLDS,
        ),
        classifier_checkpoints=expand(
            rules.train_classifier.output.best,
            model=CLASSIFIERS,
            fold=CLASSIFIER_FOLDS,
        ),
        ensemble_weights=rules.search_ensemble_weights.output.weights,
        oof_classes=rules.search_ensemble_weights.output.oof_classes,
        oof_raw=expand(
            rules.predict_oof.output.raw, detector=TEST_DETECTOR, fold=DETECTION_FOLDS
        ),
        images=rules.deduplicate.output.images,
        boxes=rules.repair_boxes.output.boxes,
    output:
        bundle=directory("results/bundle"),
        summary=f"{ENSEMBLE_DIR}/bundle_summary.json",
    log:
        "logs/ensemble/export_bundle.log",
    benchmark:
        "benchmarks/export_bundle.tsv"
    group:
        "submit"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("export_bundle"),
        runtime=runtime_min("export_bundle"),
    params:
        detector_name=TEST_DETECTOR,
        detector_predict=lookup(
            dpath=f"detectors/{TEST_DETECTOR}/predict", within=config
        ),
        wbf_iou=lookup(dpath="detection/wbf_iou", within=config),
        wbf_skip=lookup(dpath="detection/wbf_skip", within=config),
        margin=lookup(dpath="crops/margin", within=config),
        classifier_models=CLASSIFIERS,
        classifier_settings={
            "amp": CLASSIFIER_SETTINGS["amp"],
            "channels_last": CLASSIFIER_SETTINGS["channels_last"],
        },
        predict_settings=lookup(dpath="predict", within=config),
        dataset=(
            "synthetic smears from leukoflow's generator"
            if SYNTHETIC
            else f"the images and annotations under {DATA_DIR}"
        ),
    script:
        "../scripts/export_bundle.py"
