from leukoflow.curation import duplicates
from leukoflow import tables
from leukoflow.engine.runtime import run_rule


def run(smk):
    groups, images, ledger, summary = duplicates.deduplicate(
        tables.read_table(smk.input.images, tables.INGEST_IMAGES),
        tables.read_table(smk.input.boxes, tables.INGEST_BOXES),
        max_distance=smk.params.max_distance,
        conflict_policy=smk.params.conflict_policy,
        near_policy=smk.params.near_policy,
    )
    tables.write_table(groups, smk.output.groups, tables.DUPLICATE_GROUPS)
    tables.write_table(images, smk.output.images, tables.CURATED_IMAGES)
    tables.write_table(ledger, smk.output.ledger, tables.LEDGER)
    return summary


run_rule(snakemake, run)
