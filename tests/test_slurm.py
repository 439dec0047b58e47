"""The tiny workflow on a real one-node SLURM cluster through profiles/slurm.

The cluster (munged, slurmctld, slurmd from Debian's packages, installed with apt when missing)
belongs to this module: it is started under a scratch folder and stopped by PID afterwards. There
is no accounting database, so status comes from squeue (`--slurm-status-command squeue`), which is
what the issue asks a site without slurmdbd to use.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import slurm_cluster
from tests.conftest import NO_TRACKING_CONFIG, REPO, result_tables, run_workflow

pytestmark = pytest.mark.e2e

SLURM_PROFILE = REPO / "profiles" / "slurm"
RUN_TIMEOUT_S = 1200
# Four one-thread job slots on the 2-core machine: the tiny jobs spend most of their time in
# interpreter start-up and status polls, so overlapping them shortens the run.
NODE_CPUS = 4
# Faster polling than a real site needs: the tiny jobs take seconds (docs/hardware.md §6).
TEST_OVERRIDES = (
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--latency-wait", "5",
    "--jobs", str(NODE_CPUS),
)
SUBMITTED = re.compile(r"Job (\S+) has been submitted with SLURM jobid (\d+)")  # group jobs: a uuid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with slurm_cluster.local_cluster(tmp_path_factory.mktemp("slurm"), cpus=NODE_CPUS) as running:
            yield running
    except slurm_cluster.SlurmUnavailable as missing:
        pytest.skip(f"no SLURM on this machine and apt could not install it: {missing}")


@pytest.fixture(scope="module")
def slurm_run(cluster, module_dir) -> tuple[Path, subprocess.CompletedProcess]:
    workdir = module_dir
    env = {**cluster.env, "LEUKOFLOW_SLURM_PARTITION": slurm_cluster.PARTITION}
    result = run_workflow(workdir, "--workflow-profile", str(SLURM_PROFILE), *TEST_OVERRIDES,
                          overlays=(NO_TRACKING_CONFIG,), env=env, timeout=RUN_TIMEOUT_S, check=False)
    if result.returncode != 0:
        raise AssertionError(f"SLURM run failed ({result.returncode}):\n{result.stderr[-6000:]}\n"
                             f"slurmctld log:\n{cluster.log('slurmctld')[-2000:]}")
    return workdir, result


def test_profiles_exist_and_are_commented():
    for name in ("default", "slurm"):
        text = (REPO / "profiles" / name / "config.yaml").read_text()
        keys = [line.split(":")[0] for line in text.splitlines() if re.match(r"^[a-z][\w-]*:", line)]
        assert keys, name
        commented = [key for key in keys if f"\n# " in text.split(f"\n{key}:")[0][-400:]]
        assert len(commented) == len(keys), f"profiles/{name}: every key needs a comment above it"


def test_slurm_profile_submits_through_the_slurm_executor():
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert {"slurm_partition", "slurm_account", "mem_mb", "runtime"} <= set(profile["default-resources"])
    assert profile["retries"] >= 1


def test_the_cluster_is_up_and_ours(cluster):
    assert "idle" in cluster.run("sinfo", "-h", "-o", "%t")
    assert set(cluster.pids) == {"munged", "slurmctld", "slurmd"}


def test_tiny_workflow_runs_through_sbatch(cluster, slurm_run, tmp_path):
    workdir, result = slurm_run
    log = result.stdout + result.stderr
    submissions = dict(SUBMITTED.findall(log))
    plan = run_workflow(tmp_path, "-n", "--workflow-profile", str(SLURM_PROFILE), overlays=(NO_TRACKING_CONFIG,),
                        env={"LEUKOFLOW_SLURM_PARTITION": slurm_cluster.PARTITION})
    _, planned = planned_submissions(plan.stdout + plan.stderr)
    assert len(submissions) == planned, log[-3000:]
    states = dict(line.split() for line in cluster.run("squeue", "--states=all", "-h", "-o", "%i %T").splitlines())
    assert {states.get(job_id) for job_id in submissions.values()} == {"COMPLETED"}
    slurm_logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) >= len(submissions)


def test_light_rules_run_in_the_controller_and_groups_share_a_job(slurm_run):
    _, result = slurm_run
    log = result.stdout + result.stderr
    local_jobs = re.findall(r"localrule (\w+):", log)
    assert {"collect_metrics", "summarize_detection", "evaluate_classifiers"} <= set(local_jobs)
    # synthesize .. summarize_curation travel as one group job ("prepare"), one sbatch
    assert len(re.findall(r"Group job prepare", log)) == 1
    assert len(re.findall(r"Group job detector_fold", log)) == 4  # 2 detectors x 2 folds


def test_slurm_outputs_equal_a_local_run(tiny_run, slurm_run):
    workdir, _ = slurm_run
    local, cluster_run = result_tables(tiny_run), result_tables(workdir)
    assert local.keys() == cluster_run.keys()
    assert [name for name in local if local[name] != cluster_run[name]] == []


def local_rule_names() -> set[str]:
    names = set()
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:    \w+,?\n)+)", path.read_text(), flags=re.M):
            names.update(re.findall(r"\w+", block))
    return names


def planned_submissions(dry_run_log: str) -> tuple[int, int]:
    """(jobs, sbatch submissions) of a dry run: a group is one submission, local rules none."""
    top_level = re.findall(r"^rule (\w+):$", dry_run_log, flags=re.M)
    grouped = re.findall(r"^    rule (\w+):$", dry_run_log, flags=re.M)
    groups = len(re.findall(r"Group job \w+", dry_run_log))
    local = local_rule_names() | {"all"}
    submitted = groups + sum(1 for name in top_level if name not in local)
    return len(top_level) + len(grouped), submitted


def test_challenge_scale_plan_submits_a_few_dozen_jobs(tmp_path):
    from tests.conftest import shared_path

    train_csv = shared_path("data", "cytologia", "train.csv")
    data = tmp_path / "cytologia"
    (data / "images_cytologia").mkdir(parents=True)  # the plan needs the folder, not the images
    for name in ("train.csv", "test.csv"):
        (data / name).symlink_to(train_csv.parent / name)
    overlay = tmp_path / "data.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"dir": str(data)}}))
    (tmp_path / "run").mkdir()
    weights = yaml.safe_load((REPO / "config" / "cytologia.yaml").read_text())["weights"]["files"]
    for entry in weights:  # the declared weight files are planning inputs (fetch_weights brings them)
        (tmp_path / "run" / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / entry["file"]).touch()
    result = run_workflow(tmp_path / "run", "-n", "--workflow-profile", str(SLURM_PROFILE),
                          configfile=REPO / "config" / "cytologia.yaml", overlays=(overlay,),
                          env={"LEUKOFLOW_SLURM_PARTITION": "gpu"})
    jobs, submissions = planned_submissions(result.stdout + result.stderr)
    print(f"cytologia plan: {jobs} jobs, {submissions} sbatch submissions")
    assert jobs > 60  # every stage at 4 folds, 2 detectors, 6 classifiers
    assert submissions < jobs - 10  # groups and local rules save submissions
    assert submissions < 100
