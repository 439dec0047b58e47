"""The workflow stays lint-clean and snakefmt-formatted (the brief's style bar)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SNAKEMAKE

BIN = Path(sys.executable).parent


@pytest.mark.e2e
def test_snakemake_lint_is_clean():
    result = subprocess.run([str(SNAKEMAKE), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr


def test_snakefmt_check_is_clean():
    result = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
