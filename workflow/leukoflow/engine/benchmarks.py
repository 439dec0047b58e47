"""The benchmark files of a run, derived from the workflow's rules (the report's runtime table).

Convention: every rule that declares `benchmark:` runs in every configuration in which it is
defined (a rule that only some configurations run, such as `synthesize`, is only defined in
those). A rule without wildcards has one benchmark file; a rule with wildcards has one per job,
and the values of its wildcards come from the wildcard tables that the rule files keep beside
the configuration (report.smk: detectors, folds, classifiers, pixel caches). A benchmarked rule
with a wildcard that no table names stops the parse, naming the rule and the wildcard.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WILDCARD = re.compile(r"\{\s*([A-Za-z_]\w*)\s*(?:,[^{}]*(?:\{[^{}]*\}[^{}]*)*)?\}")
WildcardTable = Sequence[Mapping[str, Any]]  # rows of one or more wildcards that go together


class BenchmarkWildcardError(ValueError):
    """A benchmarked rule has a wildcard whose values no wildcard table gives."""


def wildcard_names(pattern: str) -> list[str]:
    """Wildcards of a Snakemake file pattern in order of appearance ('{fold,\\d+}' -> 'fold')."""
    return list(dict.fromkeys(WILDCARD.findall(pattern)))


def fill(pattern: str, values: Mapping[str, Any]) -> str:
    """The pattern with every wildcard replaced by its value."""
    return WILDCARD.sub(lambda match: str(values[match.group(1)]), pattern)


def benchmark_files(rules: Iterable[Any], tables: Iterable[WildcardTable]) -> list[str]:
    """Every benchmark file of the rules (objects with `name` and `benchmark`), sorted.

    `tables`: each a list of rows (mappings of wildcard -> value); the jobs of a rule are the
    product of the tables whose wildcards it has, e.g. [{detector: d}] x [{fold: f}].
    """
    tables = [list(table) for table in tables if len(table)]
    files: list[str] = []
    for rule in rules:
        pattern = getattr(rule, "benchmark", None)
        if not pattern:
            continue
        files += [fill(str(pattern), job) for job in jobs_of(rule.name, wildcard_names(str(pattern)), tables)]
    return sorted(dict.fromkeys(files))


def jobs_of(rule: str, names: Sequence[str], tables: Sequence[WildcardTable]) -> list[dict[str, Any]]:
    """The wildcard values of each job of a rule with wildcards `names` (one empty job without)."""
    used = [table for table in tables if set(table[0]) <= set(names)]
    covered = {name for table in used for name in table[0]}
    missing = sorted(set(names) - covered)
    if missing:
        raise BenchmarkWildcardError(f"rule {rule}: its benchmark wildcards {missing} are in no wildcard table; "
                                     "add their values beside REPORT_WILDCARDS (workflow/rules/report.smk)")
    overlap = [name for name in names if sum(name in table[0] for table in used) > 1]
    if overlap:
        raise BenchmarkWildcardError(f"rule {rule}: wildcards {overlap} are in more than one wildcard table")
    return [dict(item for row in rows for item in row.items()) for rows in itertools.product(*used)]
