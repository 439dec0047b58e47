rule ingest:
    input:
        train_csv=dataset_input(TRAIN_CSV),
        test_csv=dataset_input(TEST_CSV),
        images=dataset_input(IMAGES_DIR),
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
    conda:
        ENV
    threads: config["ingest"]["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        chunksize=config["ingest"]["chunksize"],
        phash_reducing_gap=config["ingest"]["phash_reducing_gap"],
    script:
        "../scripts/ingest.py"
