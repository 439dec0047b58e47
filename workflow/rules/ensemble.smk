# Ensemble, submission and model bundle (docs/method.md §9-§10).
#
#   results/ensemble/    weights.json, trials.csv, history.png, oof_classes/test_classes.parquet,
#                        summary.json (+ study.db: the Optuna study, kept between runs so a search resumes)
#   results/submission/  submission.csv (validated), summary.json (score when the test truth is known)
#   results/bundle/      everything `leukoflow predict` needs, with a checksum manifest
ENSEMBLE_SETTINGS = config["ensemble"]
ENSEMBLE_DIR = "results/ensemble"
ENSEMBLE_MULTICLASS = [n for n, e in CLASSIFIERS.items() if e["kind"] == "multiclass"]
ENSEMBLE_MULTILABEL = [n for n, e in CLASSIFIERS.items() if e["kind"] == "multilabel"]
ENSEMBLE_CROP_MARGIN = (
    config["crops"]["margin"]
    if CLASSIFIER_SETTINGS["crop_source"] == "detector"
    else CLASSIFIER_SETTINGS["ground_truth_margin"]
)
SUBMISSION_TRUTH = (
    [TEST_TRUTH_CSV] if SYNTHETIC or HOLDOUT or os.path.exists(TEST_TRUTH_CSV) else []
)


# The `metric` objective scores detector-1 OOF boxes carrying the blended crop classes.
ENSEMBLE_METRIC = ENSEMBLE_SETTINGS["objective"] == "metric"
ENSEMBLE_OBJECTIVE_INPUTS = {
    "oof_boxes": (
        f"results/detection/{TEST_DETECTOR}/oof.parquet" if ENSEMBLE_METRIC else []
    ),
    "crops": CLASSIFIER_CROPS if ENSEMBLE_METRIC else [],
    "boxes": rules.repair_boxes.output.boxes if ENSEMBLE_METRIC else [],
}


rule search_ensemble_weights:
    input:
        **ENSEMBLE_OBJECTIVE_INPUTS,
        mc_oof=expand(rules.predict_classifier.output.oof, model=ENSEMBLE_MULTICLASS),
        ml_oof=expand(rules.predict_classifier.output.oof, model=ENSEMBLE_MULTILABEL),
        mc_test=expand(rules.predict_classifier.output.test, model=ENSEMBLE_MULTICLASS),
        ml_test=expand(rules.predict_classifier.output.test, model=ENSEMBLE_MULTILABEL),
    output:
        weights=f"{ENSEMBLE_DIR}/weights.json",
        oof_classes=f"{ENSEMBLE_DIR}/oof_classes.parquet",
        test_classes=f"{ENSEMBLE_DIR}/test_classes.parquet",
        trials=f"{ENSEMBLE_DIR}/trials.csv",
        plot=report(
            f"{ENSEMBLE_DIR}/history.png",
            caption="../report/optuna_history.rst",
            category=REPORT_CATEGORY["ensemble"],
            labels={"item": "Optuna history"},
        ),
        summary=f"{ENSEMBLE_DIR}/summary.json",
    log:
        "logs/ensemble/search_ensemble_weights.log",
    benchmark:
        "benchmarks/search_ensemble_weights.tsv"
    group:
        "submit"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("search_ensemble_weights"),
        runtime=runtime_min("search_ensemble_weights"),
    params:
        # not an output: Snakemake would delete it before a rerun, and the study must survive to resume
        storage=f"{ENSEMBLE_DIR}/study.db",
        multiclass=ENSEMBLE_MULTICLASS,
        multilabel=ENSEMBLE_MULTILABEL,
        margin=ENSEMBLE_CROP_MARGIN,
        seed=lookup(dpath="seed", within=config),
        objective=lookup(dpath="ensemble/objective", within=config),
        n_trials=lookup(dpath="ensemble/n_trials", within=config),
        nested_trials=lookup(dpath="ensemble/nested_trials", within=config),
        n_startup_trials=lookup(dpath="ensemble/n_startup_trials", within=config),
        alpha_range=lookup(dpath="ensemble/alpha_range", within=config),
        winner_alpha=lookup(dpath="ensemble/winner_alpha", within=config),
        groups=lookup(dpath="ensemble/groups", within=config),
        apply=lookup(dpath="ensemble/apply", within=config),
        study_name=lookup(dpath="ensemble/study_name", within=config),
        class_offsets=lookup(dpath="ensemble/class_offsets", within=config),
    script:
        "../scripts/search_ensemble_weights.py"


rule build_submission:
    input:
        test=TEST_TABLE,
        test_boxes=rules.predict_test_boxes.output.boxes,
        classes=rules.search_ensemble_weights.output.test_classes,
        weights=rules.search_ensemble_weights.output.weights,
        truth=SUBMISSION_TRUTH,
    output:
        submission="results/submission.csv",
        summary="results/submission/summary.json",
    log:
        "logs/ensemble/build_submission.log",
    benchmark:
        "benchmarks/build_submission.tsv"
    group:
        "submit"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("build_submission"),
        runtime=runtime_min("build_submission"),
    script:
        "../scripts/build_submission.py"
