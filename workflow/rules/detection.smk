# Detection stage (METHOD.md §4-§7, §10): fold-wise detectors, OOF boxes, noisy boxes,
# background images, detector 2, classifier crops and the test boxes.
#   results/detection/{detector}/datasets/   one ultralytics dataset per fold (links + labels)
#   results/detection/{detector}/fold{fold}/  train/ (ultralytics run), weights.pt, oof_raw.parquet
#   results/detection/{detector}/oof.parquet  OOF boxes fitted to the known cell count
#   results/detection/                        noisy_flags, backgrounds, test boxes, summary.json
#   results/crops/crops.parquet               classifier crops (pixels cached by the classification stage)


rule export_yolo:
    input:
        unpack(cleaned_training_inputs),
        images=rules.deduplicate.output.images,
        boxes=rules.repair_boxes.output.boxes,
        folds=rules.make_folds.output.folds,
    output:
        # one ultralytics dataset per fold: datasets/fold{k}/{dataset.yaml,train,val}
        datasets=directory("results/detection/{detector}/datasets"),
        summary="results/detection/{detector}/export_summary.json",
    log:
        "logs/export_yolo/{detector}.log",
    benchmark:
        "benchmarks/export_yolo/{detector}.tsv"
    group:
        "between_models"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("export_yolo"),
        runtime=runtime_min("export_yolo"),
    params:
        n_folds=len(DETECTION_FOLDS),
    script:
        "../scripts/export_yolo.py"


rule train_detector:
    input:
        # the start weights (declared under `weights`): missing, the run stops at planning naming it
        lambda wc: config["detectors"][wc.detector]["init_weights"] or [],
        datasets=rules.export_yolo.output.datasets,
    output:
        weights="results/detection/{detector}/fold{fold}/weights.pt",
        history="results/detection/{detector}/fold{fold}/history.csv",
        summary="results/detection/{detector}/fold{fold}/train_summary.json",
    log:
        "logs/train_detector/{detector}/fold{fold}.log",
    benchmark:
        "benchmarks/train_detector/{detector}/fold{fold}.tsv"
    group:
        "detector_fold"
    conda:
        ENV
    threads: lambda wc: config["detectors"][wc.detector]["threads"]
    resources:
        mem_mb=memory_mb("train_detector"),
        runtime=runtime_min("train_detector"),
        gpu=lambda wc: uses_gpu(wc.detector),
    params:
        # not an output: it must survive a killed job so that the rerun resumes from last.pt
        run_dir="results/detection/{detector}/fold{fold}/train",
        arch=lambda wc: config["detectors"][wc.detector]["arch"],
        init_weights=lambda wc: config["detectors"][wc.detector]["init_weights"],
        train_args=lambda wc: config["detectors"][wc.detector]["train"],
        device=lambda wc: config["detectors"][wc.detector]["device"],
        seed=config["seed"],
    script:
        "../scripts/train_detector.py"


rule predict_oof:
    input:
        weights=rules.train_detector.output.weights,
        images=rules.deduplicate.output.images,
        folds=rules.make_folds.output.folds,
    output:
        raw="results/detection/{detector}/fold{fold}/oof_raw.parquet",
        summary="results/detection/{detector}/fold{fold}/oof_summary.json",
    log:
        "logs/predict_oof/{detector}/fold{fold}.log",
    benchmark:
        "benchmarks/predict_oof/{detector}/fold{fold}.tsv"
    group:
        "detector_fold"
    conda:
        ENV
    threads: lambda wc: config["detectors"][wc.detector]["threads"]
    resources:
        mem_mb=memory_mb("predict_oof"),
        runtime=runtime_min("predict_oof"),
        gpu=lambda wc: uses_gpu(wc.detector),
    params:
        predict=lambda wc: config["detectors"][wc.detector]["predict"],
        device=lambda wc: config["detectors"][wc.detector]["device"],
    script:
        "../scripts/predict_oof.py"


rule fit_oof:
    input:
        raw=lambda wc: fold_outputs(rules.predict_oof.output.raw, wc.detector),
        training=lambda wc: fold_outputs(
            rules.train_detector.output.summary, wc.detector
        ),
        images=rules.deduplicate.output.images,
        boxes=rules.repair_boxes.output.boxes,
        folds=rules.make_folds.output.folds,
    output:
        oof="results/detection/{detector}/oof.parquet",
        summary="results/detection/{detector}/summary.json",
    log:
        "logs/fit_oof/{detector}.log",
    benchmark:
        "benchmarks/fit_oof/{detector}.tsv"
    group:
        "between_models"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("fit_oof"),
        runtime=runtime_min("fit_oof"),
    script:
        "../scripts/fit_oof.py"


rule flag_noisy_boxes:
    input:
        raw=fold_outputs(rules.predict_oof.output.raw, NOISE_DETECTOR),
        images=rules.deduplicate.output.images,
        boxes=rules.repair_boxes.output.boxes,
        folds=rules.make_folds.output.folds,
        defects=defects_if_synthetic,
    output:
        flags="results/detection/noisy_flags.parquet",
        gallery=report(
            directory("results/detection/noisy_gallery"),
            patterns=["{reason}.png"],
            caption="../report/noisy_gallery.rst",
            category=REPORT_CATEGORY["detection"],
            labels={"item": "noisy-box audit: {reason}"},
        ),
        summary="results/detection/noisy_summary.json",
    log:
        "logs/flag_noisy_boxes.log",
    benchmark:
        "benchmarks/flag_noisy_boxes.tsv"
    group:
        "between_models"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("flag_noisy_boxes"),
        runtime=runtime_min("flag_noisy_boxes"),
    params:
        rules={
            k: v
            for k, v in config["noisy"].items()
            if k not in ("detector", "gallery_tiles", "tile_px")
        },
        gallery_tiles=config["noisy"]["gallery_tiles"],
        tile_px=config["noisy"]["tile_px"],
    script:
        "../scripts/flag_noisy_boxes.py"


rule make_backgrounds:
    input:
        oof=f"results/detection/{NOISE_DETECTOR}/oof.parquet",
        images=rules.deduplicate.output.images,
        folds=rules.make_folds.output.folds,
        test_boxes=(
            ["results/detection/test_boxes.parquet"]
            if config["backgrounds"]["allow_test_sources"]
            else []
        ),
    output:
        table="results/detection/backgrounds.parquet",
        images=directory("results/detection/backgrounds"),
        gallery=report(
            "results/detection/backgrounds_gallery.png",
            caption="../report/backgrounds_gallery.rst",
            category=REPORT_CATEGORY["detection"],
            labels={"item": "background images"},
        ),
        summary="results/detection/backgrounds_summary.json",
    log:
        "logs/make_backgrounds.log",
    benchmark:
        "benchmarks/make_backgrounds.tsv"
    group:
        "between_models"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("make_backgrounds"),
        runtime=runtime_min("make_backgrounds"),
    params:
        settings=config["backgrounds"],
        n_folds=config["folds"]["n_folds"],
        seed=config["seed"],
    script:
        "../scripts/make_backgrounds.py"


rule predict_test_boxes:
    input:
        weights=fold_outputs(rules.train_detector.output.weights, TEST_DETECTOR),
        images=rules.deduplicate.output.images,
        test=rules.ingest.output.test,
    output:
        raw="results/detection/test_raw.parquet",
        boxes="results/detection/test_boxes.parquet",
        summary="results/detection/test_summary.json",
    log:
        "logs/predict_test_boxes.log",
    benchmark:
        "benchmarks/predict_test_boxes.tsv"
    conda:
        ENV
    threads: config["detectors"][TEST_DETECTOR]["threads"]
    resources:
        mem_mb=memory_mb("predict_test_boxes"),
        runtime=runtime_min("predict_test_boxes"),
        gpu=uses_gpu(TEST_DETECTOR),
    params:
        detector=TEST_DETECTOR,
        predict=config["detectors"][TEST_DETECTOR]["predict"],
        device=config["detectors"][TEST_DETECTOR]["device"],
        wbf_iou=config["detection"]["wbf_iou"],
        wbf_skip=config["detection"]["wbf_skip"],
    script:
        "../scripts/predict_test_boxes.py"


rule make_crops:
    input:
        oof=f"results/detection/{CROP_DETECTOR}/oof.parquet",
        boxes=rules.repair_boxes.output.boxes,
        images=rules.deduplicate.output.images,
        test_boxes=rules.predict_test_boxes.output.boxes,
    output:
        crops="results/crops/crops.parquet",
        summary="results/crops/summary.json",
    log:
        "logs/make_crops.log",
    benchmark:
        "benchmarks/make_crops.tsv"
    group:
        "between_models"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("make_crops"),
        runtime=runtime_min("make_crops"),
    params:
        margin=config["crops"]["margin"],
        train_detector=CROP_DETECTOR,
        test_detector=TEST_DETECTOR,
    script:
        "../scripts/make_crops.py"


localrules:
    summarize_detection,


rule summarize_detection:
    input:
        detectors=expand(
            "results/detection/{detector}/summary.json", detector=DETECTORS
        ),
        exports=expand(rules.export_yolo.output.summary, detector=DETECTORS),
        predictions=[
            f
            for d in DETECTORS
            for f in fold_outputs(rules.predict_oof.output.summary, d)
        ],
        noisy=rules.flag_noisy_boxes.output.summary,
        backgrounds=rules.make_backgrounds.output.summary,
        test=rules.predict_test_boxes.output.summary,
        crops=rules.make_crops.output.summary,
    output:
        summary="results/detection/summary.json",
    log:
        "logs/summarize_detection.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("summarize_detection"),
        runtime=runtime_min("summarize_detection"),
    params:
        detectors=DETECTORS,
        test_detector=TEST_DETECTOR,
    script:
        "../scripts/summarize_detection.py"
