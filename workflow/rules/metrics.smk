rule collect_metrics:
    input:
        ingest=rules.ingest.output.summary,
        curation=rules.summarize_curation.output.summary,
    output:
        metrics="results/metrics.json",
    log:
        "logs/collect_metrics.log",
    conda:
        ENV
    script:
        "../scripts/collect_metrics.py"
