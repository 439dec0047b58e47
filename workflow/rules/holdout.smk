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
