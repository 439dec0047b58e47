from leukoflow.curation import box_repair
from leukoflow import tables
from leukoflow.engine.runtime import run_rule


def run(smk):
    boxes, ledger, summary = box_repair.repair_boxes(
        tables.read_table(smk.input.boxes, tables.INGEST_BOXES),
        tables.read_table(smk.input.images, tables.CURATED_IMAGES),
    )
    tables.write_table(boxes, smk.output.boxes, tables.CURATED_BOXES)
    tables.write_table(ledger, smk.output.ledger, tables.LEDGER)
    return summary


run_rule(snakemake, run)
