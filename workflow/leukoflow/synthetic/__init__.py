"""The synthetic mini-Cytologia generator; rule `synthesize` is `leukoflow.synthetic.synthesize`."""

from leukoflow.synthetic.dataset import challenge_layout, synthesize

__all__ = ["challenge_layout", "synthesize"]
