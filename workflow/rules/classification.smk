# Classification stage (docs/method.md §8-§9): fold-wise timm classifiers on crops (multiclass) and
# whole images (multilabel), OOF and test logits.
#
#   results/classification/cache/{source}_{size}.shard|.parquet  square-resized tiles, encoded
#   results/classification/{model}/fold{fold}/                 best.pt, oof_logits.parquet, summary.json
#                                                              (+ state.pt, the resumable epoch checkpoint)
#   results/classification/{model}/oof_logits.parquet          every fold's OOF logits (schema logits)
#   results/classification/{model}/test_logits.parquet         fold- and TTA-averaged test logits
#   results/classification/summary.json, confusion.png         OOF macro F1 per model, fold and class
#   results/weights/summary.json                               fetch_weights: declared weights verified
from leukoflow.classification.spec import model_defaults, with_defaults

CLASSIFIER_SETTINGS = config["classifiers"]
CLASSIFIER_DEFAULTS = model_defaults(
    os.path.join(workflow.basedir, "config", "schema.yaml")
)
CLASSIFIERS = {
    entry["name"]: with_defaults(entry, CLASSIFIER_DEFAULTS)
    for entry in CLASSIFIER_SETTINGS["models"]
}
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
CACHE_SOURCES = ["crops", "images", "background_crops", "background_images"]
PSEUDO_DIR = "results/pseudo_labels"
PSEUDO_ROUNDS = max(entry["pseudo_round"] for entry in CLASSIFIERS.values())
if PSEUDO_ROUNDS > len(config["pseudo_labels"]["thresholds"]):
    raise ValueError(
        f"pseudo_labels.thresholds lists {len(config['pseudo_labels']['thresholds'])} "
        f"round(s), a classifier has pseudo_round {PSEUDO_ROUNDS}"
    )


CLASSIFIER_CACHES = sorted(
    {cache for entry in CLASSIFIERS.values() for cache in model_caches(entry)}
)


localrules:
    fetch_weights,
    evaluate_classifiers,
    select_pseudo_labels,
    summarize_pseudo_labels,


rule fetch_weights:
    output:
        summary="results/weights/summary.json",
    log:
        "logs/classification/fetch_weights.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("fetch_weights"),
        runtime=runtime_min("fetch_weights"),
    params:
        weights=lookup(dpath="weights/files", within=config),
        timeout_s=lookup(dpath="weights/timeout_s", within=config),
    script:
        "../scripts/fetch_weights.py"


rule ground_truth_crops:
    input:
        boxes=rules.repair_boxes.output.boxes,
        folds=rules.make_folds.output.folds,
        images=rules.deduplicate.output.images,
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
        margin=lookup(dpath="classifiers/ground_truth_margin", within=config),
    script:
        "../scripts/ground_truth_crops.py"


rule cache_classifier_inputs:
    input:
        unpack(cache_tables),
    output:
        # kept, not temp(): editing one model re-trains it without re-encoding the cache;
        # docs/stages/classification.md says how to reclaim the space
        pixels=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.shard",
        index=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.parquet",
        summary=f"{CLASSIFIER_CACHE}/{{source}}_{{size}}.json",
    log:
        "logs/classification/cache_{source}_{size}.log",
    benchmark:
        "benchmarks/cache_classifier_inputs/{source}_{size}.tsv"
    wildcard_constraints:
        source="|".join(CACHE_SOURCES),
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
        source="{source}",
        size=lambda wildcards: int(wildcards.size),
        seed=lookup(dpath="seed", within=config),
        cache_format=lookup(dpath="classifiers/cache_format", within=config),
        background=lookup(dpath="classifiers/background_crops", within=config),
    script:
        "../scripts/cache_classifier_inputs.py"


rule train_classifier:
    input:
        unpack(classifier_data),
        unpack(classifier_start),
    output:
        best=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/best.pt",
        oof=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/oof_logits.parquet",
        fold_test=f"{CLASSIFIER_DIR}/{{model}}/fold{{fold}}/test_logits.parquet",
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
        # one model's block only: editing a model re-runs that model's jobs alone
        spec=lookup(dpath="{model}", within=CLASSIFIERS),
        fold=lambda wildcards: int(wildcards.fold),
        seed=lookup(dpath="seed", within=config),
        device=lookup(dpath="classifiers/device", within=config),
        amp=lookup(dpath="classifiers/amp", within=config),
        deterministic=lookup(dpath="classifiers/deterministic", within=config),
        channels_last=lookup(dpath="classifiers/channels_last", within=config),
        prefetch=lookup(dpath="classifiers/prefetch", within=config),
    script:
        "../scripts/train_classifier.py"


rule predict_classifier:
    input:
        fold_oof=lambda wildcards: expand(
            rules.train_classifier.output.oof,
            model=wildcards.model,
            fold=CLASSIFIER_FOLDS,
        ),
        fold_test=lambda wildcards: expand(
            rules.train_classifier.output.fold_test,
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
    threads: 1
    resources:
        mem_mb=memory_mb("predict_classifier"),
        runtime=runtime_min("predict_classifier"),
    params:
        spec=lookup(dpath="{model}", within=CLASSIFIERS),
    script:
        "../scripts/predict_classifier.py"


rule select_pseudo_labels:
    input:
        fold_test=lambda wildcards: expand(
            rules.train_classifier.output.fold_test,
            model=round_models(int(wildcards.round) - 1),
            fold=CLASSIFIER_FOLDS,
        ),
        crops=CLASSIFIER_CROPS,
    output:
        pseudo=f"{PSEUDO_DIR}/round{{round}}.parquet",
        summary=f"{PSEUDO_DIR}/round{{round}}.json",
    log:
        "logs/classification/select_pseudo_labels_{round}.log",
    wildcard_constraints:
        round=r"[1-9]\d*",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("select_pseudo_labels"),
        runtime=runtime_min("select_pseudo_labels"),
    params:
        round=lambda wildcards: int(wildcards.round),
        threshold=lambda wildcards: config["pseudo_labels"]["thresholds"][
            int(wildcards.round) - 1
        ],
        models=lambda wildcards: round_models(int(wildcards.round) - 1),
        n_folds=len(CLASSIFIER_FOLDS),
    script:
        "../scripts/select_pseudo_labels.py"


rule summarize_pseudo_labels:
    input:
        rounds=expand(
            rules.select_pseudo_labels.output.summary,
            round=range(1, PSEUDO_ROUNDS + 1),
        ),
        oof=expand(
            rules.predict_classifier.output.oof,
            model=[name for r in range(PSEUDO_ROUNDS + 1) for name in round_models(r)],
        ),
    output:
        summary=f"{PSEUDO_DIR}/summary.json",
    log:
        "logs/classification/summarize_pseudo_labels.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("summarize_pseudo_labels"),
        runtime=runtime_min("summarize_pseudo_labels"),
    params:
        models=[name for r in range(PSEUDO_ROUNDS + 1) for name in round_models(r)],
        model_rounds=[r for r in range(PSEUDO_ROUNDS + 1) for name in round_models(r)],
        n_outputs=[
            23 + int(CLASSIFIERS[name]["background"])
            for r in range(PSEUDO_ROUNDS + 1)
            for name in round_models(r)
        ],
    script:
        "../scripts/summarize_pseudo_labels.py"


rule evaluate_classifiers:
    input:
        # the pseudo-label summary is part of the stage's results when rounds are on
        rules.summarize_pseudo_labels.output.summary if PSEUDO_ROUNDS else [],
        oof=expand(rules.predict_classifier.output.oof, model=CLASSIFIERS),
        test=expand(rules.predict_classifier.output.test, model=CLASSIFIERS),
        fold_summaries=expand(
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
        specs=list(CLASSIFIERS.values()),
        n_folds=len(CLASSIFIER_FOLDS),
    script:
        "../scripts/evaluate_classifiers.py"
