if SYNTHETIC:

    rule synthesize:
        output:
            images=directory(IMAGES_DIR),
            train_csv=TRAIN_CSV,
            test_csv=TEST_CSV,
            test_truth=os.path.join(DATA_DIR, "test_truth.csv"),
            defects=DEFECTS,
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
            seed=config["seed"],
            synthetic=config["synthetic"],
        script:
            "../scripts/synthesize.py"
