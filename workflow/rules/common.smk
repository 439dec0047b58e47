from leukoflow.engine import offline
from leukoflow.engine.benchmarks import benchmark_files
from leukoflow.engine.config import export_package_path, gpu_token, job_request

offline.enforce()
export_package_path()

ENV = "../../envs/leukoflow.yaml"
DATA_DIR = config["data"]["dir"]
IMAGES_DIR = os.path.join(DATA_DIR, config["data"]["images_subdir"])
SOURCE_TRAIN_CSV = os.path.join(DATA_DIR, config["data"]["train_csv"])
SYNTHETIC = config["data"]["source"] == "synthetic"
HOLDOUT = config["data"]["holdout_fraction"] > 0
DEFECTS = os.path.join(DATA_DIR, "defects.parquet")

# Held-out mode: ingest checks every annotated row as training (with a header-only test.csv);
# deduplicate draws the test split by duplicate group and hold_out_test writes its tables.
TRAIN_CSV = SOURCE_TRAIN_CSV
if HOLDOUT:
    TEST_CSV = "results/holdout/no_test.csv"
    TEST_TRUTH_CSV = "results/holdout/test_truth.csv"
    TEST_TABLE = "results/holdout/test.parquet"
else:
    TEST_CSV = os.path.join(DATA_DIR, config["data"]["test_csv"])
    TEST_TRUTH_CSV = os.path.join(DATA_DIR, "test_truth.csv")
    TEST_TABLE = "results/ingest/test.parquet"


def memory_mb(rule_name):
    """mem_mb of a rule's job from config['resources'], scaled up on each retry."""
    return lambda wildcards, attempt: job_request(
        config["resources"], rule_name, "mem_mb", attempt
    )


def runtime_min(rule_name):
    """Wall-time limit (minutes) of a rule's job from config['resources'], scaled on retry."""
    return lambda wildcards, attempt: job_request(
        config["resources"], rule_name, "runtime", attempt
    )


def dataset_input(path):
    """Generated files are ordinary inputs; a user's (DVC-tracked) dataset is `ancient` so a
    `dvc pull`/`checkout` that only touches timestamps never re-runs the workflow."""
    return path if SYNTHETIC or path.startswith("results/") else ancient(path)


def defects_if_synthetic(wildcards):
    return [DEFECTS] if SYNTHETIC else []


# Detection (workflow/rules/detection.smk)
DETECTORS = list(config["detectors"])
DETECTION_FOLDS = list(range(config["folds"]["n_folds"]))
TEST_DETECTOR = config["detection"]["test_detector"]
CROP_DETECTOR = config["crops"]["detector"]
NOISE_DETECTOR = config["noisy"]["detector"]


wildcard_constraints:
    detector="|".join(DETECTORS),
    fold=r"\d+",


REVIEWED_BOXES = "results/detection/reviewed_boxes.parquet"
REVIEWED_FLAGS = "results/detection/reviewed_flags.parquet"
MULTICLASS_MODELS = [
    m["name"] for m in config["classifiers"]["models"] if m["kind"] == "multiclass"
]


def is_clean(wildcards):
    return config["detectors"][wildcards.detector]["clean"]


def training_boxes(wildcards):
    """Detector 2 (`clean: true`) trains on the reviewed boxes, without the noisy images, with backgrounds."""
    return REVIEWED_BOXES if is_clean(wildcards) else rules.repair_boxes.output.boxes


def uses_gpu(detector):
    return gpu_token(config["detectors"][detector]["device"])


def fold_outputs(pattern, detector):
    return expand(pattern, detector=detector, fold=DETECTION_FOLDS)


# Snakemake report (workflow/rules/report.smk): one category per stage, numbered in stage order
# because the report lists its categories alphabetically.
REPORT_CATEGORY = {
    "dataset": "1. Dataset",
    "curation": "2. Curation",
    "detection": "3. Detection",
    "classification": "4. Classification",
    "ensemble": "5. Ensemble",
    "scores": "6. Scores",
    "provenance": "7. Software and runtimes",
}


def report_benchmarks(wildcards):
    """The benchmark file of every job of every benchmarked rule, wildcard values from
    REPORT_WILDCARDS in report.smk. Read once the whole workflow is parsed, so a new benchmarked
    rule joins the runtime table without a change here."""
    return benchmark_files(workflow.rules, REPORT_WILDCARDS)


# Classification (workflow/rules/classification.smk): a model's caches, tables and start weights.
def cache_files(source, size):
    stem = f"{CLASSIFIER_CACHE}/{source}_{size}"
    return {"pixels": f"{stem}.shard", "index": f"{stem}.parquet"}


def model_caches(entry):
    """(source, size) of every pixel cache one model reads."""
    multiclass = entry["kind"] == "multiclass"
    caches = [("crops" if multiclass else "images", entry["img_size"])]
    if entry["background"]:
        source = "background_crops" if multiclass else "background_images"
        caches.append((source, entry["img_size"]))
    return caches


def cache_tables(wildcards):
    """The tables one pixel cache is built from (an empty list for a table it does not use)."""
    source = wildcards.source
    return {
        "images": rules.deduplicate.output.images,
        "crops": CLASSIFIER_CROPS if source == "crops" else [],
        "folds": rules.make_folds.output.folds if source == "images" else [],
        "backgrounds": (
            CLASSIFIER_BACKGROUNDS if source.startswith("background") else []
        ),
    }


def classifier_data(wildcards):
    """Pixel cache and truth tables of one model (training and prediction)."""
    entry = CLASSIFIERS[wildcards.model]
    multiclass = entry["kind"] == "multiclass"
    return {
        **cache_files(*model_caches(entry)[0]),
        "crops": CLASSIFIER_CROPS if multiclass else [],
        "boxes": [] if multiclass else rules.repair_boxes.output.boxes,
        "folds": [] if multiclass else rules.make_folds.output.folds,
    }


def classifier_start(wildcards):
    """Background cache, declared start weights and the init_from model's checkpoint of one fold."""
    entry = CLASSIFIERS[wildcards.model]
    caches = model_caches(entry)
    background = cache_files(*caches[1]) if len(caches) > 1 else {}
    return {
        "background_pixels": background.get("pixels", []),
        "background_index": background.get("index", []),
        "weights": entry["weights"] or [],
        "init": (
            f"{CLASSIFIER_DIR}/{entry['init_from']}/fold{wildcards.fold}/best.pt"
            if entry["init_from"]
            else []
        ),
        "pseudo": (
            f"{PSEUDO_DIR}/round{entry['pseudo_round']}.parquet"
            if entry["pseudo_round"]
            else []
        ),
    }


def round_models(round_):
    """The multiclass models of one pseudo-label round (round 0: no pseudo-labels)."""
    return [
        name
        for name, entry in CLASSIFIERS.items()
        if entry["kind"] == "multiclass" and entry["pseudo_round"] == round_
    ]
