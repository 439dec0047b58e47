"""The workflow engine: rule runtime and binding, MLflow tracking, provenance, offline switches, config, docs."""
