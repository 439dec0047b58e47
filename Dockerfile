# leukoflow's software environment: requirements.lock on Python 3.11, the leukoflow package
# installed. Snakemake runs each job in it with `--sdm apptainer` (docs/hpc.md, "Containers");
# the workflow files and data stay on the host and are mounted by Snakemake.
#
#   docker build -t leukoflow:0.1.0 .                   (or: podman build -t leukoflow:0.1.0 .)
#   apptainer build leukoflow-0.1.0.sif docker-daemon://leukoflow:0.1.0
#
# BASE can be any Debian-based image with Python 3.11 (a site mirror, or a locally built one:
# docs/hpc.md). TORCH_INDEX swaps the torch wheel for an older CUDA driver, e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 (docs/hpc.md, "Older CUDA drivers").
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    YOLO_OFFLINE=1 \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    XDG_CACHE_HOME=/tmp/leukoflow-cache \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# A venv, so the same steps work on the python image and on a plain Debian base with python3-venv.
RUN python3 -m venv /opt/venv
WORKDIR /opt/leukoflow
COPY requirements.lock pyproject.toml README.md LICENSE ./
COPY workflow/leukoflow workflow/leukoflow

RUN if [ -n "$TORCH_INDEX" ]; then \
        grep -v -E '^(torch|torchvision)==' requirements.lock > /tmp/rest.lock \
        && python -m pip install --index-url "$TORCH_INDEX" \
             "$(grep -E '^torch==' requirements.lock | cut -d+ -f1)" \
             "$(grep -E '^torchvision==' requirements.lock | cut -d+ -f1)" \
        && python -m pip install -r /tmp/rest.lock ; \
    else \
        python -m pip install -r requirements.lock ; \
    fi \
    && python -m pip install --no-deps . \
    && python -c "import leukoflow.inference.predict, snakemake, ultralytics, timm, mlflow, dvc" \
    && leukoflow --help > /dev/null

CMD ["leukoflow", "--help"]
