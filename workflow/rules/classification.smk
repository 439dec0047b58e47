# Classification stage (METHOD.md §8-§9): fold-wise timm classifiers on crops (multiclass) and
# whole images (multilabel), OOF and test logits.
#
#   results/classification/cache/{source}_{size}.npy|.parquet  decoded, square-resized pixels
#   results/classification/{model}/fold{fold}/                 best.pt, oof_logits.parquet, summary.json
#                                                              (+ state.pt, the resumable epoch checkpoint)
#   results/classification/{model}/oof_logits.parquet          every fold's OOF logits (schema logits)
#   results/classification/{model}/test_logits.parquet         fold- and TTA-averaged test logits
#   results/classification/summary.json, confusion.png         OOF macro F1 per model, fold and class
from leukoflow.classification import crop_cache

CLASSIFIER_SETTINGS = config["classifiers"]
CLASSIFIERS = {entry["name"]: entry for entry in CLASSIFIER_SETTINGS["models"]}
CLASSIFIER_FOLDS = list(range(config["folds"]["n_folds"]))
CLASSIFIER_DIR = "results/classification"
CLASSIFIER_CACHE = f"{CLASSIFIER_DIR}/cache"
CLASSIFIER_MODELS = "|".join(CLASSIFIERS)
CLASSIFIER_CROPS = (
    "results/crops/crops.parquet"
    if CLASSIFIER_SETTINGS["crop_source"] == "detector"
    else f"{CLASSIFIER_DIR}/ground_truth_crops.parquet"
)
CLASSIFIER_BACKGROUNDS = "results/detection/backgrounds.parquet"
CLASSIFIER_GPUS = gpu_token(CLASSIFIER_SETTINGS["device"])


rule ground_truth_crops:
    input:
        boxes=crop_cache.CURATED_BOXES_PATH,
        folds=crop_cache.FOLDS_PATH,
        images=crop_cache.CURATED_IMAGES_PATH,
    output:
        crops=f"{CLASSIFIER_DIR}/ground_truth_crops.parquet",
    log:
        "logs/classification/ground_truth_crops.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("ground_truth_crops"),
        runtime=runtime_min("ground_truth_crops"),
    params:
        margin=CLASSIFIER_SETTINGS["ground_truth_margin"],
    script:
        "../scripts/ground_truth_crops.py"


rule cache_classifier_inputs:
    input:
        unpack(
            lambda wildcards: crop_cache.cache_tables(
                wildcards.source,
                crops_table=CLASSIFIER_CROPS,
                backgrounds_table=CLASSIFIER_BACKGROUNDS,
            )
        ),
    output:
        pixels=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.npy",
        index=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.parquet",
        summary=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.json",
    log:
        "logs/classification/cache_{source}_{size}.log",
    benchmark:
        "benchmarks/cache_classifier_inputs/{source}_{size}.tsv"
    wildcard_constraints:
        source="|".join(crop_cache.SOURCES),
        size=r"\d+",
    group:
        "between_models"
    conda:
        ENV
    threads: CLASSIFIER_SETTINGS["threads"]
    resources:
        mem_mb=memory_mb("cache_classifier_inputs"),
        runtime=runtime_min("cache_classifier_inputs"),
    params:
        seed=config["seed"],
        background=CLASSIFIER_SETTINGS["background_crops"],
    script:
        "../scripts/cache_classifier_inputs.py"


rule train_classifier:
    input:
        unpack(
            lambda wildcards: crop_cache.model_inputs(
                CLASSIFIERS[wildcards.model],
                cache_dir=CLASSIFIER_CACHE,
                crops_table=CLASSIFIER_CROPS,
            )
        ),
    output:
        best=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/best.pt",
        oof=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/oof_logits.parquet",
        summary=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/summary.json",
    log:
        "logs/classification/train_{model}_fold{fold}.log",
    benchmark:
        "benchmarks/train_classifier/{model}/fold{fold}.tsv"
    wildcard_constraints:
        model=CLASSIFIER_MODELS,
        fold=r"\d+",
    conda:
        ENV
    threads: CLASSIFIER_SETTINGS["threads"]
    resources:
        mem_mb=memory_mb("train_classifier"),
        runtime=runtime_min("train_classifier"),
        gpu=CLASSIFIER_GPUS,
    params:
        # state.pt in out_dir is not an output: it must survive a killed job so the rerun resumes
        out_dir=lambda wildcards: f"{CLASSIFIER_DIR}/{wildcards.model}/fold{wildcards.fold}",
        spec=lambda wildcards: CLASSIFIERS[wildcards.model],
        settings=CLASSIFIER_SETTINGS,
        seed=config["seed"],
    script:
        "../scripts/train_classifier.py"


rule predict_classifier:
    input:
        unpack(
            lambda wildcards: crop_cache.model_inputs(
                CLASSIFIERS[wildcards.model],
                cache_dir=CLASSIFIER_CACHE,
                crops_table=CLASSIFIER_CROPS,
            )
        ),
        best=lambda wildcards: expand(
            rules.train_classifier.output.best,
            model=wildcards.model,
            fold=CLASSIFIER_FOLDS,
        ),
        fold_oof=lambda wildcards: expand(
            rules.train_classifier.output.oof,
            model=wildcards.model,
            fold=CLASSIFIER_FOLDS,
        ),
    output:
        oof=f"{CLASSIFIER_DIR}/{{model}}/oof_logits.parquet",
        test=f"{CLASSIFIER_DIR}/{{model}}/test_logits.parquet",
        summary=f"{CLASSIFIER_DIR}/{{model}}/summary.json",
    log:
        "logs/classification/predict_{model}.log",
    benchmark:
        "benchmarks/predict_classifier/{model}.tsv"
    wildcard_constraints:
        model=CLASSIFIER_MODELS,
    conda:
        ENV
    threads: CLASSIFIER_SETTINGS["threads"]
    resources:
        mem_mb=memory_mb("predict_classifier"),
        runtime=runtime_min("predict_classifier"),
        gpu=CLASSIFIER_GPUS,
    params:
        spec=lambda wildcards: CLASSIFIERS[wildcards.model],
        settings=CLASSIFIER_SETTINGS,
        seed=config["seed"],
    script:
        "../scripts/predict_classifier.py"


localrules:
    evaluate_classifiers,


rule evaluate_classifiers:
    input:
        oof=expand(rules.predict_classifier.output.oof, model=CLASSIFIERS),
        test=expand(rules.predict_classifier.output.test, model=CLASSIFIERS),
        folds=expand(
            rules.train_classifier.output.summary,
            model=CLASSIFIERS,
            fold=CLASSIFIER_FOLDS,
        ),
    output:
        summary=f"{CLASSIFIER_DIR}/summary.json",
        confusion=report(
            f"{CLASSIFIER_DIR}/confusion.png",
            caption="../report/confusion.rst",
            category=REPORT_CATEGORY["classification"],
            labels={"item": "confusion matrices"},
        ),
    log:
        "logs/classification/evaluate_classifiers.log",
    benchmark:
        "benchmarks/evaluate_classifiers.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("evaluate_classifiers"),
        runtime=runtime_min("evaluate_classifiers"),
    params:
        names=list(CLASSIFIERS),
        specs=list(CLASSIFIERS.values()),
        fold_summaries={
            name: expand(
                rules.train_classifier.output.summary,
                model=name,
                fold=CLASSIFIER_FOLDS,
            )
            for name in CLASSIFIERS
        },
    script:
        "../scripts/evaluate_classifiers.py"
