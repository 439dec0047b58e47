from leukoflow.curation import summary as curation
from leukoflow.engine.runtime import run_rule


def run(smk):
    return curation.summarize_from_files(
        dedup_summary=smk.input.dedup,
        repair_summary=smk.input.repair,
        folds_summary=smk.input.folds,
        ledgers=[smk.input.dedup_ledger, smk.input.repair_ledger],
        ledger_out=smk.output.ledger,
        groups_path=smk.input.groups,
        defects_path=smk.input.defects[0] if smk.input.defects else None,
    )


run_rule(snakemake, run)
