if SYNTHETIC:

    rule synthesize:
        output:
            images=directory(IMAGES_DIR),
            train_csv=TRAIN_CSV,
            test_csv=TEST_CSV,
            test_truth=os.path.join(DATA_DIR, "test_truth.csv"),
            defect_table=DEFECTS,
            summary="results/synthetic/summary.json",
        log:
            "logs/synthesize.log",
        benchmark:
            "benchmarks/synthesize.tsv"
        group:
            "prepare"
        conda:
            ENV
        threads: config["synthetic"]["threads"]
        resources:
            mem_mb=memory_mb("synthesize"),
            runtime=runtime_min("synthesize"),
        params:
            seed=lookup(dpath="seed", within=config),
            n_images=lookup(dpath="synthetic/n_images", within=config),
            test_fraction=lookup(dpath="synthetic/test_fraction", within=config),
            jpeg_quality=lookup(dpath="synthetic/jpeg_quality", within=config),
            defects=lookup(dpath="synthetic/defects", within=config),
            near_duplicate_max_distance=lookup(
                dpath="synthetic/near_duplicate_max_distance", within=config
            ),
        script:
            "../scripts/synthesize.py"
