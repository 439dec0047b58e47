from leukoflow.synthetic import generator as synthesize
from leukoflow.engine.runtime import run_rule


def run(smk):
    settings = smk.params.synthetic
    return synthesize.synthesize(
        smk.output.train_csv.rsplit("/", 1)[0],
        n_images=settings["n_images"],
        test_fraction=settings["test_fraction"],
        seed=smk.params.seed,
        jpeg_quality=settings["jpeg_quality"],
        defects=settings["defects"],
        workers=smk.threads,
        near_duplicate_max_distance=settings["near_duplicate_max_distance"],
    )


# Worker processes are spawned and re-import this script: only the main process runs the rule.
if __name__ == "__main__":
    run_rule(snakemake, run)
