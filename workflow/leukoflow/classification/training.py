"""Transitional facade: the names other packages imported from the old single classification module.

The stage now lives in `spec`, `items`, `augment`, `model`, `scoring`, `loop` and `stage`;
import from those in new code.
"""

from leukoflow.classification.augment import augment_batch, normalise, to_model_input  # noqa: F401
from leukoflow.classification.items import (ItemSet, background_items, crops_from_ground_truth,  # noqa: F401
                                            gather_pixels, image_labels, labels_to_multi_hot, load_items,
                                            main_items, split_fold, truth_for, truth_from_paths, truth_from_tables)
from leukoflow.classification.loop import STATE_FILE, make_mixer, mix_batch, train_fold  # noqa: F401
from leukoflow.classification.model import (BEST_FILE, Classifier, build_model, initial_model,  # noqa: F401
                                            load_best, predict_logits, resolve_device)
from leukoflow.classification.scoring import (argmax_macro_f1, batch_loss, evaluate_oof, frame_logits,  # noqa: F401
                                              frame_targets, logits_frame, per_class_f1, plot_confusion,
                                              selection_score, thresholded_macro_f1)
from leukoflow.classification.spec import (KINDS, LOSSES, TTA_MODES, ClassifierSpec, TrainSettings,  # noqa: F401
                                           model_defaults, with_defaults)
from leukoflow.classification.stage import predict_test, run_train_fold  # noqa: F401
