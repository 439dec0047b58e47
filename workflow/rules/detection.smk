# Detection stage (docs/method.md §4-§7, §10): fold-wise detectors, OOF boxes, noisy boxes, the
# review round trip, background images, detector 2, classifier crops, the label audit and the test boxes.
#   results/detection/{detector}/datasets/   one ultralytics dataset per fold (links + labels)
#   results/detection/{detector}/fold{fold}/  train/ (ultralytics run), weights.pt, oof_raw.parquet
#   results/detection/{detector}/oof.parquet  OOF boxes fitted to the known cell count
#   results/detection/                        noisy_flags, reviewed boxes/flags, label_flags, backgrounds,
#                                             test boxes, summary.json
#   results/crops/crops.parquet               classifier crops (pixels cached by the classification stage)


rule export_yolo:
    input:
        images=rules.deduplicate.output.images,
        boxes=training_boxes,
        folds=rules.make_folds.output.folds,
        noisy=lambda wc: [REVIEWED_FLAGS] if is_clean(wc) else [],
        backgrounds=lambda wc: (
            ["results/detection/backgrounds.parquet"] if is_clean(wc) else []
        ),
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
        n_folds=lookup(dpath="folds/n_folds", within=config),
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
        fold="{fold}",
        arch=lookup(dpath="detectors/{detector}/arch", within=config),
        init_weights=lookup(dpath="detectors/{detector}/init_weights", within=config),
        train_args=lookup(dpath="detectors/{detector}/train", within=config),
        device=lookup(dpath="detectors/{detector}/device", within=config),
        seed=lookup(dpath="seed", within=config),
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
        fold="{fold}",
        detector="{detector}",
        predict=lookup(dpath="detectors/{detector}/predict", within=config),
        device=lookup(dpath="detectors/{detector}/device", within=config),
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
    params:
        detector="{detector}",
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
        by_kind=report(
            "results/detection/noisy_by_kind.csv",
            caption="../report/noisy_by_kind.rst",
            category=REPORT_CATEGORY["detection"],
            labels={"item": "noisy-box precision/recall per defect kind"},
        ),
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
        evidence=lookup(dpath="noisy/evidence", within=config),
        decision=lookup(dpath="noisy/decision", within=config),
        gallery_settings=lookup(dpath="noisy/gallery", within=config),
    script:
        "../scripts/flag_noisy_boxes.py"


rule apply_review:
    input:
        curated_boxes=rules.repair_boxes.output.boxes,
        noisy=rules.flag_noisy_boxes.output.flags,
        overrides=[config["noisy"]["overrides"]] if config["noisy"]["overrides"] else [],
    output:
        reviewed_boxes=REVIEWED_BOXES,
        reviewed_flags=REVIEWED_FLAGS,
        review_ledger="results/detection/review_ledger.csv",
        summary="results/detection/review_summary.json",
    log:
        "logs/apply_review.log",
    benchmark:
        "benchmarks/apply_review.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("apply_review"),
        runtime=runtime_min("apply_review"),
    script:
        "../scripts/apply_review.py"


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
        background_images=directory("results/detection/backgrounds"),
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
        settings=lookup(dpath="backgrounds", within=config),
        n_folds=lookup(dpath="folds/n_folds", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/make_backgrounds.py"


rule predict_test_boxes:
    input:
        weights=fold_outputs(rules.train_detector.output.weights, TEST_DETECTOR),
        images=rules.deduplicate.output.images,
        test=TEST_TABLE,
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
        predict=lookup(dpath=f"detectors/{TEST_DETECTOR}/predict", within=config),
        device=lookup(dpath=f"detectors/{TEST_DETECTOR}/device", within=config),
        wbf_iou=lookup(dpath="detection/wbf_iou", within=config),
        wbf_skip=lookup(dpath="detection/wbf_skip", within=config),
    script:
        "../scripts/predict_test_boxes.py"


rule make_crops:
    input:
        oof=f"results/detection/{CROP_DETECTOR}/oof.parquet",
        reviewed_boxes=rules.apply_review.output.reviewed_boxes,
        noisy=rules.apply_review.output.reviewed_flags,
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
        margin=lookup(dpath="crops/margin", within=config),
        giou_floor=lookup(dpath="crops/giou_floor", within=config),
        train_detector=CROP_DETECTOR,
        test_detector=TEST_DETECTOR,
    script:
        "../scripts/make_crops.py"


rule clean_labels:
    input:
        crops=rules.make_crops.output.crops,
        label_boxes=rules.apply_review.output.reviewed_boxes,
        logits=expand(
            "results/classification/{model}/oof_logits.parquet",
            model=MULTICLASS_MODELS,
        ),
        defects=defects_if_synthetic,
    output:
        label_flags="results/detection/label_flags.parquet",
        summary="results/detection/label_summary.json",
    log:
        "logs/clean_labels.log",
    benchmark:
        "benchmarks/clean_labels.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("clean_labels"),
        runtime=runtime_min("clean_labels"),
    params:
        filter_by=lookup(dpath="noisy/labels/filter_by", within=config),
        action=lookup(dpath="noisy/labels/action", within=config),
    script:
        "../scripts/clean_labels.py"


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
        labels=rules.clean_labels.output.summary,
        review=rules.apply_review.output.summary,
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
        detector_names=DETECTORS,
        test_detector=TEST_DETECTOR,
    script:
        "../scripts/summarize_detection.py"
