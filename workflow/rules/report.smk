# Report items (`snakemake --report results/report.html`): the figures and tables the stages do not
# already leave, one category per stage (REPORT_CATEGORY in common.smk). Captions: workflow/report/.
#
#   results/report/   dataset_overview.png, ledger_summary.html, duplicate_examples.png,
#                     detector_oof.png, detector_folds.html, per_class_f1.png, ensemble_weights.html,
#                     scores.html, software.html, runtimes.html
REPORT_DIR = "results/report"
# (source, size) of every pixel cache the classifiers read ("{source}_{size}.shard")
REPORT_CACHES = CLASSIFIER_CACHES
# The values of every wildcard of a benchmarked rule: the runtime table's jobs are the product of
# the tables a rule's benchmark wildcards name (leukoflow.engine.benchmarks states the convention).
REPORT_WILDCARDS = [
    [{"detector": detector} for detector in DETECTORS],
    [{"fold": fold} for fold in DETECTION_FOLDS],
    [{"model": model} for model in CLASSIFIERS],
    [{"source": source, "size": size} for source, size in REPORT_CACHES],
]


# seconds each: on a cluster they run beside the controller instead of waiting in the queue
localrules:
    collect_metrics,


rule collect_metrics:
    input:
        ingest=rules.ingest.output.summary,
        curation=rules.summarize_curation.output.summary,
        detection=rules.summarize_detection.output.summary,
        classification=rules.evaluate_classifiers.output.summary,
        ensemble=rules.search_ensemble_weights.output.summary,
        submission=rules.build_submission.output.summary,
    output:
        metrics="results/metrics.json",
    log:
        "logs/collect_metrics.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("collect_metrics"),
        runtime=runtime_min("collect_metrics"),
    script:
        "../scripts/collect_metrics.py"


localrules:
    plot_dataset_overview,
    tabulate_ledger,
    plot_duplicate_examples,
    plot_detector_oof,
    plot_per_class_f1,
    tabulate_ensemble_weights,
    tabulate_scores,
    tabulate_software,
    tabulate_runtimes,


rule plot_dataset_overview:
    input:
        images=rules.ingest.output.images,
        boxes=rules.ingest.output.boxes,
        test=TEST_TABLE,
    output:
        plot=report(
            f"{REPORT_DIR}/dataset_overview.png",
            caption="../report/dataset_overview.rst",
            category=REPORT_CATEGORY["dataset"],
            labels={"item": "dataset overview"},
        ),
    log:
        "logs/report/plot_dataset_overview.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("plot_dataset_overview"),
        runtime=runtime_min("plot_dataset_overview"),
    script:
        "../scripts/plot_dataset_overview.py"


rule tabulate_ledger:
    input:
        ledgers=[rules.ingest.output.ledger, rules.summarize_curation.output.ledger],
    output:
        table=report(
            f"{REPORT_DIR}/ledger_summary.html",
            caption="../report/ledger_summary.rst",
            category=REPORT_CATEGORY["dataset"],
            labels={"item": "data-quality ledger"},
        ),
    log:
        "logs/report/tabulate_ledger.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("tabulate_ledger"),
        runtime=runtime_min("tabulate_ledger"),
    script:
        "../scripts/tabulate_ledger.py"


rule plot_duplicate_examples:
    input:
        groups=rules.deduplicate.output.groups,
        images=rules.ingest.output.images,
    output:
        plot=report(
            f"{REPORT_DIR}/duplicate_examples.png",
            caption="../report/duplicate_examples.rst",
            category=REPORT_CATEGORY["curation"],
            labels={"item": "duplicate groups"},
        ),
    log:
        "logs/report/plot_duplicate_examples.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("plot_duplicate_examples"),
        runtime=runtime_min("plot_duplicate_examples"),
    params:
        n_groups=lookup(dpath="report/duplicate_groups", within=config),
        tile_px=lookup(dpath="report/tile_px", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/plot_duplicate_examples.py"


rule plot_detector_oof:
    input:
        oof=expand(rules.fit_oof.output.oof, detector=DETECTORS),
        summaries=expand(rules.fit_oof.output.summary, detector=DETECTORS),
        boxes=rules.repair_boxes.output.boxes,
    output:
        plot=report(
            f"{REPORT_DIR}/detector_oof.png",
            caption="../report/detector_oof.rst",
            category=REPORT_CATEGORY["detection"],
            labels={"item": "OOF GIoU and mAP per fold"},
        ),
        table=report(
            f"{REPORT_DIR}/detector_folds.html",
            caption="../report/detector_folds.rst",
            category=REPORT_CATEGORY["detection"],
            labels={"item": "detector figures per fold"},
        ),
    log:
        "logs/report/plot_detector_oof.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("plot_detector_oof"),
        runtime=runtime_min("plot_detector_oof"),
    params:
        detectors=DETECTORS,
        bins=lookup(dpath="report/giou_bins", within=config),
    script:
        "../scripts/plot_detector_oof.py"


rule plot_per_class_f1:
    input:
        classification_summary=rules.evaluate_classifiers.output.summary,
    output:
        plot=report(
            f"{REPORT_DIR}/per_class_f1.png",
            caption="../report/per_class_f1.rst",
            category=REPORT_CATEGORY["classification"],
            labels={"item": "per-class F1"},
        ),
    log:
        "logs/report/plot_per_class_f1.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("plot_per_class_f1"),
        runtime=runtime_min("plot_per_class_f1"),
    script:
        "../scripts/plot_per_class_f1.py"


rule tabulate_ensemble_weights:
    input:
        weights=rules.search_ensemble_weights.output.weights,
        ensemble_summary=rules.search_ensemble_weights.output.summary,
    output:
        table=report(
            f"{REPORT_DIR}/ensemble_weights.html",
            caption="../report/ensemble_weights.rst",
            category=REPORT_CATEGORY["ensemble"],
            labels={"item": "ensemble weights"},
        ),
    log:
        "logs/report/tabulate_ensemble_weights.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("tabulate_ensemble_weights"),
        runtime=runtime_min("tabulate_ensemble_weights"),
    script:
        "../scripts/tabulate_ensemble_weights.py"


rule tabulate_scores:
    input:
        metrics=rules.collect_metrics.output.metrics,
    output:
        table=report(
            f"{REPORT_DIR}/scores.html",
            caption="../report/scores.rst",
            category=REPORT_CATEGORY["scores"],
            labels={"item": "final scores"},
        ),
    log:
        "logs/report/tabulate_scores.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("tabulate_scores"),
        runtime=runtime_min("tabulate_scores"),
    script:
        "../scripts/tabulate_scores.py"


rule tabulate_software:
    input:
        # not read: the table is rebuilt after each run and when a pin changes
        run_metrics=rules.collect_metrics.output.metrics,
        lock=os.path.join(workflow.basedir, "requirements.lock"),
    output:
        table=report(
            f"{REPORT_DIR}/software.html",
            caption="../report/software.rst",
            category=REPORT_CATEGORY["provenance"],
            labels={"item": "software versions"},
        ),
    log:
        "logs/report/tabulate_software.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("tabulate_software"),
        runtime=runtime_min("tabulate_software"),
    params:
        packages=lookup(dpath="report/packages", within=config),
    script:
        "../scripts/tabulate_software.py"


rule tabulate_runtimes:
    input:
        benchmarks=report_benchmarks,
    output:
        table=report(
            f"{REPORT_DIR}/runtimes.html",
            caption="../report/runtimes.rst",
            category=REPORT_CATEGORY["provenance"],
            labels={"item": "runtime per rule"},
        ),
    log:
        "logs/report/tabulate_runtimes.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("tabulate_runtimes"),
        runtime=runtime_min("tabulate_runtimes"),
    script:
        "../scripts/tabulate_runtimes.py"
