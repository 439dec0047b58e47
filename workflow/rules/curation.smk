rule deduplicate:
    input:
        images=rules.ingest.output.images,
        boxes=rules.ingest.output.boxes,
    output:
        groups="results/curation/duplicate_groups.parquet",
        images="results/curation/images.parquet",
        ledger="results/curation/dedup_ledger.csv",
        summary="results/curation/dedup_summary.json",
    log:
        "logs/deduplicate.log",
    benchmark:
        "benchmarks/deduplicate.tsv"
    group:
        "prepare"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("deduplicate"),
        runtime=runtime_min("deduplicate"),
    params:
        max_distance=config["dedup"]["max_distance"],
        conflict_policy=config["dedup"]["conflict_policy"],
        near_policy=config["dedup"]["near_policy"],
    script:
        "../scripts/deduplicate.py"


rule repair_boxes:
    input:
        boxes=rules.ingest.output.boxes,
        images=rules.deduplicate.output.images,
    output:
        boxes="results/curation/boxes.parquet",
        ledger="results/curation/repair_ledger.csv",
        summary="results/curation/repair_summary.json",
    log:
        "logs/repair_boxes.log",
    benchmark:
        "benchmarks/repair_boxes.tsv"
    group:
        "prepare"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("repair_boxes"),
        runtime=runtime_min("repair_boxes"),
    script:
        "../scripts/repair_boxes.py"


rule make_folds:
    input:
        images=rules.deduplicate.output.images,
        boxes=rules.repair_boxes.output.boxes,
    output:
        folds="results/curation/folds.parquet",
        balance="results/curation/fold_balance.csv",
        plot=report(
            "results/curation/fold_balance.png",
            caption="../report/fold_balance.rst",
            category=REPORT_CATEGORY["curation"],
            labels={"item": "fold balance"},
        ),
        summary="results/curation/folds_summary.json",
    log:
        "logs/make_folds.log",
    benchmark:
        "benchmarks/make_folds.tsv"
    group:
        "prepare"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("make_folds"),
        runtime=runtime_min("make_folds"),
    params:
        n_folds=config["folds"]["n_folds"],
        seed=config["seed"],
        bins=config["folds"]["bins"],
    script:
        "../scripts/make_folds.py"


rule summarize_curation:
    input:
        dedup=rules.deduplicate.output.summary,
        repair=rules.repair_boxes.output.summary,
        folds=rules.make_folds.output.summary,
        groups=rules.deduplicate.output.groups,
        dedup_ledger=rules.deduplicate.output.ledger,
        repair_ledger=rules.repair_boxes.output.ledger,
        defects=defects_if_synthetic,
    output:
        ledger="results/curation/ledger.csv",
        summary="results/curation/summary.json",
    log:
        "logs/summarize_curation.log",
    group:
        "prepare"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=memory_mb("summarize_curation"),
        runtime=runtime_min("summarize_curation"),
    script:
        "../scripts/summarize_curation.py"
