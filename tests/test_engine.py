"""The engine's helpers: summaries, provenance, devices, benchmark files, rule binding."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from leukoflow.engine import benchmarks, devices, provenance, runtime, summaries
from tests.conftest import REPO, SNAKEMAKE


# ----------------------------------------------------------------------------- summaries

def test_summary_json_round_trips_numpy_values(tmp_path):
    import numpy as np

    path = tmp_path / "deep" / "summary.json"
    summaries.write_json(path, {"n": np.int64(3), "x": np.float32(0.5), "where": tmp_path})
    assert summaries.read_json(path) == {"n": 3, "x": 0.5, "where": str(tmp_path)}


def test_flatten_joins_nested_keys_and_keeps_empty_mappings():
    assert summaries.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": "x"}) == {
        "a.b": 1, "a.c.d": [1, 2], "e": {}, "f": "x"}
    assert summaries.flatten({"a": 1}, prefix="p.") == {"p.a": 1}


# ----------------------------------------------------------------------------- provenance

def test_config_hash_ignores_key_order_and_sees_values():
    assert provenance.config_hash({"a": 1, "b": {"c": 2}}) == provenance.config_hash({"b": {"c": 2}, "a": 1})
    assert provenance.config_hash({"a": 1}) != provenance.config_hash({"a": 2})


def test_data_version_reads_the_dvc_hash_of_a_folder_dataset(tmp_path):
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"x")
    config = {"data": {"source": "folder", "dir": str(tmp_path / "data"), "images_subdir": "images",
                       "train_csv": "train.csv", "test_csv": "test.csv"}}
    untracked = provenance.data_version(config)
    assert untracked.startswith("manifest:")
    (images / "b.jpg").write_bytes(b"y")
    assert provenance.data_version(config) != untracked, "a new image changes the manifest"
    (tmp_path / "data" / "images.dvc").write_text(textwrap.dedent("""\
        outs:
        - md5: 0123456789abcdef0123456789abcdef.dir
          size: 2
          nfiles: 2
          path: images
        """))
    assert provenance.data_version(config) == "dvc:0123456789abcdef0123456789abcdef.dir"


def test_file_sha256_reads_in_blocks_and_matches_hashlib(tmp_path):
    path = tmp_path / "weights.bin"
    data = bytes(range(256)) * 9000  # more than one 1 MiB block
    path.write_bytes(data)
    assert provenance.file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_installed_versions_name_missing_packages():
    versions = provenance.installed_versions(["pyyaml", "no-such-distribution-xyz"], missing="absent")
    assert versions["no-such-distribution-xyz"] == "absent" and versions["pyyaml"][0].isdigit()


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert provenance.git_state(tmp_path) == ("unknown", "unknown")


# ----------------------------------------------------------------------------- devices

def test_resolve_device_keeps_explicit_names_and_resolves_auto():
    import torch

    assert devices.resolve_device("cpu") == "cpu" and devices.resolve_device("0,1") == "0,1"
    assert devices.resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_torch_device_reads_gpu_indices_as_cuda():
    assert str(devices.torch_device("cpu")) == "cpu"
    assert str(devices.torch_device("1")) == "cuda:1"
    assert devices.torch_device("cuda").type == "cuda"


# ----------------------------------------------------------------------------- benchmark files

def _rule(name, benchmark=None):
    return SimpleNamespace(name=name, benchmark=benchmark)


TABLES = [[{"detector": "d1"}, {"detector": "d2"}], [{"fold": 0}, {"fold": 1}],
          [{"source": "crops", "size": 64}, {"source": "images", "size": 128}]]


def test_benchmark_files_expand_each_rule_over_its_wildcard_tables():
    rules = [_rule("ingest", "benchmarks/ingest.tsv"), _rule("all"),
             _rule("train", "benchmarks/train/{detector}/fold{fold,\\d+}.tsv"),
             _rule("cache", "benchmarks/cache/{source}_{size}.tsv")]
    assert benchmarks.benchmark_files(rules, TABLES) == [
        "benchmarks/cache/crops_64.tsv", "benchmarks/cache/images_128.tsv", "benchmarks/ingest.tsv",
        "benchmarks/train/d1/fold0.tsv", "benchmarks/train/d1/fold1.tsv",
        "benchmarks/train/d2/fold0.tsv", "benchmarks/train/d2/fold1.tsv"]


def test_a_benchmark_wildcard_without_values_stops_naming_the_rule():
    with pytest.raises(benchmarks.BenchmarkWildcardError, match=r"rule train_classifier: .*\['model'\]"):
        benchmarks.benchmark_files([_rule("train_classifier", "benchmarks/{model}/fold{fold}.tsv")], TABLES)


def test_a_partial_joint_table_is_not_taken():
    # {source}_{size} rows go together: a rule with only {size} must not pick half of the table
    with pytest.raises(benchmarks.BenchmarkWildcardError, match="size"):
        benchmarks.benchmark_files([_rule("resize", "benchmarks/{size}.tsv")], TABLES)


def test_wildcard_names_read_constraints_with_braces():
    assert benchmarks.wildcard_names("b/{a}/{n,\\\\d{2}}_{a}.tsv") == ["a", "n"]


# ----------------------------------------------------------------------------- rule binding

class _Named(dict):
    """Stands in for Snakemake's named lists (items() and attribute access)."""

    __getattr__ = dict.__getitem__


def _job(**sections):
    return SimpleNamespace(rule="r", input=_Named(sections.get("input", {})), output=_Named(sections.get("output", {})),
                           params=_Named(sections.get("params", {})), threads=3, log=["logs/r.log"])


def test_bind_passes_named_files_params_threads_and_log_but_not_the_summary():
    def entry(*, table, plot, bins, threads, log):
        return {}

    job = _job(input={"table": "t.parquet"}, output={"plot": "p.png", "summary": "s.json"}, params={"bins": 5})
    assert runtime.bind(job, entry) == {"table": "t.parquet", "plot": "p.png", "bins": 5, "threads": 3,
                                        "log": "logs/r.log"}


def test_bind_names_unknown_and_missing_arguments():
    def entry(*, table, seed):
        return {}

    with pytest.raises(runtime.RuleBindingError, match=r"not taken by the entry \['extra'\].*not given by the rule \['seed'\]"):
        runtime.bind(_job(input={"table": "t", "extra": "x"}), entry)
    with pytest.raises(runtime.RuleBindingError, match="named in both input and output"):
        runtime.bind(_job(input={"table": "t"}, output={"table": "u"}), entry)


def test_the_engine_and_the_report_import_without_mlflow_or_torch():
    """Only tracked jobs pay for MLflow; a report or data job never imports it (nor torch)."""
    code = ("import sys, leukoflow.engine.runtime, leukoflow.engine.tracking, leukoflow.report; "
            "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


MINI_SNAKEFILE = """
rule all:
    input: "out/summary.json"

rule job:
    output: summary="out/summary.json", table="out/table.csv"
    log: "logs/job.log"
    script: "job.py"
"""

# The entry registers an exit handler: it runs when the process ends the usual way, and must not run
# after a finished job (run_rule ends it at once); output, summary and log must be complete anyway.
MINI_SCRIPT = """
import atexit
import logging
from pathlib import Path
from leukoflow.engine.runtime import run_rule


def job(*, table):
    atexit.register(lambda: Path("teardown_ran").touch())
    Path(table).write_text("a\\n1\\n")
    logging.getLogger("mini").info("last line before the exit")
    return {"rows": 1}


run_rule(snakemake, job)
"""


@pytest.mark.e2e
def test_a_finished_job_ends_without_interpreter_teardown_and_loses_nothing(tmp_path):
    (tmp_path / "Snakefile").write_text(MINI_SNAKEFILE)
    (tmp_path / "job.py").write_text(MINI_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    done = subprocess.run([str(SNAKEMAKE), "--cores", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == 1
    assert (tmp_path / "out" / "table.csv").read_text() == "a\n1\n"
    log = (tmp_path / "logs" / "job.log").read_text()
    assert "last line before the exit" in log and "rule job done" in log
    assert not (tmp_path / "teardown_ran").exists()


def test_stand_in_job_objects_return_from_run_rule():
    assert not runtime._is_snakemake_job(SimpleNamespace(rule="x"))
