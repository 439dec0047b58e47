rule collect_metrics:
    input:
        ingest=rules.ingest.output.summary,
        curation=rules.summarize_curation.output.summary,
        ensemble=rules.search_ensemble_weights.output.summary,
        submission=rules.build_submission.output.summary,
    output:
        metrics="results/metrics.json",
    log:
        "logs/collect_metrics.log",
    conda:
        ENV
    script:
        "../scripts/collect_metrics.py"
