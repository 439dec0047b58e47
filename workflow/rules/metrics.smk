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
