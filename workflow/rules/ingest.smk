if HOLDOUT:

    rule no_test_table:
        output:
            test_csv=TEST_CSV,
        log:
            "logs/no_test_table.log",
        group:
            "prepare"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=memory_mb("no_test_table"),
            runtime=runtime_min("no_test_table"),
        script:
            "../scripts/no_test_table.py"

    # Runs after deduplicate and repair_boxes (curation.smk), which draw the split by duplicate
    # group and check the held-out rows like any other.
    rule hold_out_test:
        input:
            held_out_boxes="results/curation/held_out_boxes.parquet",
            curated_images="results/curation/images.parquet",
        output:
            test_table=TEST_TABLE,
            test_csv="results/holdout/test.csv",
            test_truth=TEST_TRUTH_CSV,
            summary="results/holdout/summary.json",
        log:
            "logs/hold_out_test.log",
        group:
            "prepare"
        conda:
            ENV
        threads: 1
        resources:
            mem_mb=memory_mb("hold_out_test"),
            runtime=runtime_min("hold_out_test"),
        params:
            seed=lookup(dpath="seed", within=config),
        script:
            "../scripts/hold_out_test.py"


rule ingest:
    input:
        train_csv=dataset_input(TRAIN_CSV),
        test_csv=dataset_input(TEST_CSV),
        images_dir=dataset_input(IMAGES_DIR),
    output:
        images="results/ingest/images.parquet",
        boxes="results/ingest/boxes.parquet",
        test="results/ingest/test.parquet",
        ledger="results/ingest/ledger.csv",
        repaired=directory("results/ingest/repaired"),
        summary="results/ingest/summary.json",
    log:
        "logs/ingest.log",
    benchmark:
        "benchmarks/ingest.tsv"
    group:
        "prepare"
    conda:
        ENV
    threads: config["ingest"]["threads"]
    resources:
        mem_mb=memory_mb("ingest"),
        runtime=runtime_min("ingest"),
    params:
        chunksize=lookup(dpath="ingest/chunksize", within=config),
        decode_reduction=lookup(dpath="ingest/decode_reduction", within=config),
        phash_reducing_gap=lookup(dpath="ingest/phash_reducing_gap", within=config),
        max_image_mb=lookup(dpath="ingest/max_image_mb", within=config),
    script:
        "../scripts/ingest.py"
