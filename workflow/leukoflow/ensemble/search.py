"""Transitional facade: the names other packages imported from the old single ensemble module.

The stage now lives in `inputs`, `blending`, `objectives`, `study`, `offsets` and `weight_search`.
"""

from leukoflow.ensemble.blending import (EQUAL_ALPHA, Blended, Scheme, blend, blended_probability,  # noqa: F401
                                         equal_scheme, normalised, sigmoid, single_model_scheme, softmax,
                                         winner_scheme)
from leukoflow.ensemble.inputs import EnsembleInputs, N_CLASSES, align_inputs, read_logits  # noqa: F401
from leukoflow.ensemble.objectives import (CLASS_CODES, OBJECTIVES, CropF1, OfficialMetric,  # noqa: F401
                                           official_metric)
from leukoflow.ensemble.offsets import fit_offsets, nested_offsets  # noqa: F401
from leukoflow.ensemble.study import (ALPHA_PARAM, WEIGHT_PARAM, has_search_space, nested_estimate,  # noqa: F401
                                      scheme_of_trial, scheme_params, search, suggest_scheme, trial_seed,
                                      trials_frame)
from leukoflow.ensemble.weight_search import (SCHEMES, classes_frame, most_frequent_class,  # noqa: F401
                                              plot_history, search_ensemble_weights, study_fingerprint)
