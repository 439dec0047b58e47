"""leukoflow: the Cytologia white-blood-cell method as a reproducible Snakemake workflow."""

__version__ = "0.1.0"
