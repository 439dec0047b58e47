# Inference: the model bundle that `leukoflow predict` loads (results/bundle/, with a checksum manifest).


rule export_bundle:
    input:
        detector=expand(
            rules.train_detector.output.weights,
            detector=TEST_DETECTOR,
            fold=DETECTION_FOLDS,
        ),
        classifiers=expand(
            rules.train_classifier.output.best,
            model=CLASSIFIERS,
            fold=CLASSIFIER_FOLDS,
        ),
        weights=rules.search_ensemble_weights.output.weights,
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
        detector=TEST_DETECTOR,
        detector_predict=config["detectors"][TEST_DETECTOR]["predict"],
        wbf_iou=config["detection"]["wbf_iou"],
        wbf_skip=config["detection"]["wbf_skip"],
        margin=config["crops"]["margin"],
        checkpoints={
            name: expand(
                rules.train_classifier.output.best, model=name, fold=CLASSIFIER_FOLDS
            )
            for name in CLASSIFIERS
        },
        classifier_settings={
            "amp": CLASSIFIER_SETTINGS["amp"],
            "channels_last": CLASSIFIER_SETTINGS["channels_last"],
        },
        predict_settings=config["predict"],
    script:
        "../scripts/export_bundle.py"
