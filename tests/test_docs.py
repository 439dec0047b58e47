"""Generated documents (config reference, table schemas, conda pins) never drift from their sources."""

import re
import subprocess

import yaml

from leukoflow.engine import docs

from leukoflow import tables
import pytest

from tests.conftest import REPO, SNAKEMAKE


def test_generated_documents_are_up_to_date():
    assert docs.main(["--check"]) == 0, "run `python -m leukoflow.engine.docs` and commit the result"


def test_conda_environment_holds_exactly_the_lock_pins():
    environment = yaml.safe_load((REPO / "envs" / "leukoflow.yaml").read_text())
    pip_pins = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    lock = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.strip()]
    assert pip_pins == lock
    assert "torch==2.14.1" in pip_pins and "torchvision==0.29.1" in pip_pins


def test_config_reference_lists_every_schema_key():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    reference = (REPO / "config" / "README.md").read_text()
    for key, _ in docs._walk_schema(schema):
        assert f"| `{key}` |" in reference


# ----------------------------------------------------------------------------- stage pages

def test_every_table_is_written_by_a_stage_and_read_tables_exist():
    written = {name for stage in docs.STAGES for name in stage.writes}
    assert written == set(tables.SCHEMAS), "add each new table to the `writes` of its stage in leukoflow/docs.py"
    for stage in docs.STAGES:
        assert set(stage.reads) <= set(tables.SCHEMAS), stage.slug


def test_every_config_section_belongs_to_one_stage():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    owned = [section for stage in docs.STAGES for section in stage.config] + list(docs.WORKFLOW_WIDE_CONFIG)
    assert sorted(owned) == sorted(schema["properties"]), "each top-level config section: one stage (docs.py)"


def test_every_rule_file_belongs_to_one_stage():
    files = set(docs.rules_by_file(REPO)) - set(docs.SHARED_RULE_FILES)
    claimed = [name for stage in docs.STAGES for name in stage.rule_files]
    assert sorted(claimed) == sorted(files), "each workflow/rules/*.smk file: one stage (docs.py)"


def test_stage_page_keeps_the_prose_and_replaces_only_the_generated_block():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    stage = docs.STAGES[1]
    page = f"# Title\n\nprose before\n\n{docs.BEGIN_MARKER}\nstale\n{docs.END_MARKER}\n\nprose after\n"
    rendered = docs.stage_page(stage, page, schema)
    assert rendered.startswith("# Title\n\nprose before\n\n") and rendered.endswith("\n\nprose after\n")
    assert "stale" not in rendered
    for name in stage.writes:
        assert f"### `{name}`: `{tables.SCHEMAS[name].path_pattern}`" in rendered
        assert all(f"| `{column.name}` |" in rendered for column in tables.SCHEMAS[name].columns)
    assert f"| `{stage.config[0]}` |" in rendered
    assert docs.stage_page(stage, rendered, schema) == rendered  # idempotent


def test_table_cells_escape_pipes():
    schema = tables.Schema("t", "p", "d", (tables.Column("split", "str", "train | test"),))
    assert "| `split` | str | train \\| test |" in docs._schema_section(schema)


def test_every_stage_page_says_what_it_reports():
    for stage in docs.STAGES:
        page = (REPO / "docs" / "stages" / f"{stage.slug}.md").read_text()
        assert "## What it reports" in page, stage.slug
        assert "results/" in page.split("## What it reports", 1)[1], stage.slug


def test_documented_summary_keys_are_parsed_per_file():
    page = "## What it reports\n\n`results/a/summary.json` (x):\n\n- `k1`: one\n- `k2`: two\n\n" \
           "`results/b.json`:\n\n- `k3`: three (only on the synthetic data)\n\n## Next\n\n- `ignored`: x\n"
    assert docs.documented_summary_keys(page) == {
        "results/a/summary.json": {"k1": "- `k1`: one", "k2": "- `k2`: two"},
        "results/b.json": {"k3": "- `k3`: three (only on the synthetic data)"},
    }


# ----------------------------------------------------------------------------- rule graph

@pytest.mark.e2e
def test_rulegraph_image_shows_exactly_the_workflow_rules():
    """docs/rulegraph.svg (`make rulegraph`, needs graphviz) is compared with `snakemake --rulegraph`
    (no graphviz needed): a rule added or removed without re-rendering the image fails here."""
    graph = subprocess.run([str(SNAKEMAKE), "--rulegraph", "--snakefile", str(REPO / "Snakefile")], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    expected = set(re.findall(r'label = "(\w+)"', graph))
    image = (REPO / "docs" / "rulegraph.svg").read_text()
    shown = set(re.findall(r"<text[^>]*>(\w+)</text>", image))
    assert expected and shown == expected, "run `make rulegraph` and commit docs/rulegraph.svg"
    assert "![" in (readme := (REPO / "README.md").read_text()) and "docs/rulegraph.svg" in readme


# spelled in pieces so that this file does not match itself
REFERENCE_DOCS = re.compile("|".join([r"\b(?:METHOD|METRIC|ECOSYSTEM|STYLE)\.md\b", "STACK" + "-FACTS", "shared" + "/docs"]))


def test_no_tracked_file_points_at_reference_documents_outside_the_repository():
    """The project stands alone: its docs say what it needs in their own words (docs/method.md, ...)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix in {".svg", ".png", ".jpg", ".parquet"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {match.group(0)}" for match in REFERENCE_DOCS.finditer(text)]
    assert not offenders, offenders
