rule deduplicate:
    input:
        ingest_images=rules.ingest.output.images,
        ingest_boxes=rules.ingest.output.boxes,
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
        max_distance=lookup(dpath="dedup/max_distance", within=config),
        neighbours=lookup(dpath="dedup/neighbours", within=config),
        min_similarity=lookup(dpath="dedup/min_similarity", within=config),
        conflict_policy=lookup(dpath="dedup/conflict_policy", within=config),
        near_policy=lookup(dpath="dedup/near_policy", within=config),
        holdout_fraction=lookup(dpath="data/holdout_fraction", within=config),
        seed=lookup(dpath="seed", within=config),
    script:
        "../scripts/deduplicate.py"


rule repair_boxes:
    input:
        ingest_boxes=rules.ingest.output.boxes,
        curated_images=rules.deduplicate.output.images,
    output:
        boxes="results/curation/boxes.parquet",
        held_out_boxes="results/curation/held_out_boxes.parquet",
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
        curated_images=rules.deduplicate.output.images,
        curated_boxes=rules.repair_boxes.output.boxes,
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
        n_folds=lookup(dpath="folds/n_folds", within=config),
        seed=lookup(dpath="seed", within=config),
        bins=lookup(dpath="folds/bins", within=config),
    script:
        "../scripts/make_folds.py"


rule summarize_curation:
    input:
        dedup_summary=rules.deduplicate.output.summary,
        repair_summary=rules.repair_boxes.output.summary,
        folds_summary=rules.make_folds.output.summary,
        groups=rules.deduplicate.output.groups,
        dedup_ledger=rules.deduplicate.output.ledger,
        repair_ledger=rules.repair_boxes.output.ledger,
        defect_table=defects_if_synthetic,
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
