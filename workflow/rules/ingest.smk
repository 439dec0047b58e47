if HOLDOUT:

    rule hold_out_test:
        input:
            train_csv=dataset_input(SOURCE_TRAIN_CSV),
        output:
            train_csv=TRAIN_CSV,
            test_csv=TEST_CSV,
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
            fraction=config["data"]["holdout_fraction"],
            seed=config["seed"],
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
        phash_reducing_gap=lookup(dpath="ingest/phash_reducing_gap", within=config),
        max_image_mb=lookup(dpath="ingest/max_image_mb", within=config),
    script:
        "../scripts/ingest.py"
