"""Classification stage: pixel cache, training loop, resume, determinism, logits tables, metrics.

Every test trains tiny timm backbones from scratch (resnet10t at 32 px) on a few dozen generated
crops whose class is their colour, so a couple of epochs on 2 CPU threads take about a second.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from leukoflow.classification.augment import augment_batch
from leukoflow.classification.items import crops_from_ground_truth, image_labels, load_items, split_fold
from leukoflow.classification.loop import STATE_FILE, make_mixer, mix_batch, train_fold
from leukoflow.classification.model import BEST_FILE, initial_model, load_best, predict_logits
from leukoflow.classification.scoring import (argmax_macro_f1, batch_loss, evaluate_oof, frame_logits, frame_targets,
                                              selection_score, thresholded_macro_f1)
from leukoflow.classification.spec import ClassifierSpec, TrainSettings, model_defaults, with_defaults
from leukoflow.classification.stage import predict_test, run_train_fold
from leukoflow.classification import crop_cache, evaluation, stage
from leukoflow import tables
from leukoflow.constants import CLASSES

REPO = Path(__file__).resolve().parents[1]
COLOURS = {0: (200, 40, 40), 3: (40, 180, 60), 7: (50, 60, 210)}  # class index -> cell colour
N_FOLDS = 3
SIZE = 32


def _smear(rng: np.random.Generator, colour: tuple[int, int, int], box: tuple[int, int, int, int],
           size: int = 72) -> Image.Image:
    pixels = np.full((size, size, 3), 225, dtype=np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = np.array(colour, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """36 training images (one coloured cell each, 3 classes, 3 folds) and 6 test images."""
    root = tmp_path_factory.mktemp("classification")
    rng = np.random.default_rng(0)
    images, boxes, folds = [], [], []
    classes = list(COLOURS)
    for k in range(42):
        name = f"img{k:02d}.png"
        class_idx = classes[k % 3]
        box = (int(rng.integers(4, 20)), int(rng.integers(4, 20)), int(rng.integers(40, 66)), int(rng.integers(40, 66)))
        path = root / name
        _smear(rng, COLOURS[class_idx], box).save(path)
        split = "train" if k < 36 else "test"
        images.append({"name": name, "split": split, "path": str(path), "width": 72, "height": 72,
                       "pixel_mean": 0.0, "pixel_std": 0.0, "group_id": -1, "role": "unique",
                       "train_test_duplicate": False, "keep": True})
        if split == "train":
            boxes.append({"row": k, "name": name, "x1": float(box[0]), "y1": float(box[1]), "x2": float(box[2]),
                          "y2": float(box[3]), "label": CLASSES[class_idx], "class_idx": class_idx, "clipped": False})
            folds.append({"name": name, "fold": (k // 3) % N_FOLDS, "group_id": -1, "n_boxes": 1,
                          "multilabel": str(class_idx), "surface_bin": 0, "box_ratio_bin": 0, "mean_bin": 0,
                          "std_bin": 0})
        else:
            boxes_test = {"name": name, "trustii_id": 1000 + k, "box": box}
            images[-1]["_test"] = boxes_test
    test_rows = [row.pop("_test") for row in images if "_test" in row]
    images = pd.DataFrame(images).astype({"name": "str", "split": "str", "path": "str", "role": "str"})
    boxes = pd.DataFrame(boxes).astype({"name": "str", "label": "str"})
    folds = pd.DataFrame(folds).astype({"name": "str", "multilabel": "str"})
    crops = crops_from_ground_truth(boxes, folds, images, margin=2)
    test_crops = pd.DataFrame({
        "crop_id": [f"{row['name']}#0" for row in test_rows], "name": [row["name"] for row in test_rows],
        "split": "test", "fold": -1, "x1": [float(row["box"][0]) for row in test_rows],
        "y1": [float(row["box"][1]) for row in test_rows], "x2": [float(row["box"][2]) for row in test_rows],
        "y2": [float(row["box"][3]) for row in test_rows], "score": 0.9, "label": "", "class_idx": -1,
        "trustii_id": [row["trustii_id"] for row in test_rows], "source": "det2_test",
    })
    text_columns = ("crop_id", "name", "split", "label", "source")
    crops = pd.concat([crops, test_crops], ignore_index=True).astype({c: "str" for c in text_columns})
    tables.validate(crops, tables.CROPS)
    tables.write_table(crops, root / "crops.parquet", tables.CROPS)
    cache = (root / "crops_32.shard", root / "crops_32.parquet")
    _build_cache("crops", *cache, images=images, crops=crops)
    image_cache = (root / "images_32.shard", root / "images_32.parquet")
    _build_cache("images", *image_cache, images=images, folds=folds)
    return {"root": root, "images": images, "boxes": boxes, "folds": folds, "crops": crops, "cache": cache,
            "image_cache": image_cache, "crops_path": root / "crops.parquet"}


def _build_cache(source, pixels, index, *, images, crops=None, folds=None, backgrounds=None, per_image=4,
                 min_side=88, max_side=224, valid_side=146):
    return crop_cache.build_cache(source, SIZE, pixels, index, images=images, crops=crops, folds=folds,
                                  backgrounds=backgrounds, seed=42, threads=1, background_crops_per_image=per_image,
                                  background_min_side=min_side, background_max_side=max_side,
                                  background_valid_side=valid_side, background_valid_position=(0.05, 0.05),
                                  fmt="webp")


DEFAULTS = model_defaults(REPO / "config" / "schema.yaml")


def _entry(**overrides) -> dict:
    base = dict(name="tiny", backbone="resnet10t", kind="multiclass", img_size=SIZE, epochs=2, batch_size=8,
                lr=3e-3, validations_per_epoch=1, tta="hflip")
    return with_defaults({**base, **overrides}, DEFAULTS)


def _spec(**overrides) -> ClassifierSpec:
    return ClassifierSpec.from_config(_entry(**overrides))


def test_a_model_entry_is_the_same_param_whatever_the_order_of_its_keys():
    entry = {"name": "m", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32, "epochs": 1, "lr": 0.01}
    reordered = dict(reversed(list(entry.items())))
    assert list(with_defaults(entry, DEFAULTS).items()) == list(with_defaults(reordered, DEFAULTS).items())
    assert with_defaults({**entry, "epochs": 3}, DEFAULTS)["epochs"] == 3


SETTINGS = TrainSettings(seed=7, device="cpu", threads=1, amp=True, deterministic=True, channels_last=True,
                         prefetch=True)


def _fold_data(dataset, spec, fold=0):
    arrays, main, background, _ = load_items(spec, dataset["cache"], dataset["crops"])
    train, valid = split_fold(main, fold, background)
    return arrays, train, valid


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


# ----------------------------------------------------------------------------- inputs and cache

def test_ground_truth_crops_follow_the_crops_schema(dataset):
    crops = dataset["crops"][dataset["crops"]["split"] == "train"]
    boxes = dataset["boxes"]
    assert len(crops) == len(boxes)
    assert (crops["source"] == "ground_truth").all() and (crops["trustii_id"] == -1).all()
    assert crops["crop_id"].str.endswith("#0").all()
    first = boxes.iloc[0]
    assert crops.iloc[0]["x1"] == max(first["x1"] - 2, 0) and crops.iloc[0]["x2"] == min(first["x2"] + 2, 72)


def test_cache_holds_squashed_crops_in_table_order(dataset):
    pixels, index = crop_cache.read_cache(*dataset["cache"])
    assert pixels.shape == (len(dataset["crops"]), SIZE, SIZE, 3) and pixels.dtype == np.uint8
    assert index["id"].tolist() == dataset["crops"]["crop_id"].tolist()
    assert set(index["role"]) == {"train", "test"}
    # the centre of each crop has the colour of its class
    for row in (0, 1, 2):
        class_idx = int(dataset["crops"].iloc[row]["class_idx"])
        assert np.abs(pixels[row, SIZE // 2, SIZE // 2].astype(int) - COLOURS[class_idx]).max() < 30


def test_cache_refuses_an_empty_box(tmp_path, dataset):
    bad = dataset["crops"].head(2).copy()
    bad.loc[bad.index[1], "x2"] = bad.loc[bad.index[1], "x1"]
    with pytest.raises(ValueError, match=r"img01\.png.*empty"):
        crop_cache.build_crop_cache(bad, dict(zip(dataset["images"]["name"], dataset["images"]["path"])), SIZE,
                                    tmp_path / "bad.shard", threads=1, fmt="webp")


def test_background_crops_fold_and_roles(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for k in range(4):
        path = tmp_path / f"bg{k}.jpg"
        Image.fromarray(rng.integers(150, 255, (120, 100, 3), dtype=np.uint8)).save(path)
        rows.append({"name": f"bg{k}.jpg", "path": str(path), "fold": k % 2})
    backgrounds = pd.DataFrame(rows)
    index = crop_cache.build_background_crop_cache(backgrounds, 16, tmp_path / "bg.shard", seed=3, n_train_crops=3,
                                                   min_side=20, max_side=200, valid_side=40,
                                                   valid_position=(0.05, 0.05), threads=1, fmt="webp")
    assert len(index) == 4 * 4 and (index["role"] == "valid").sum() == 4
    train, valid = crop_cache.background_crop_boxes(100, 120, np.random.default_rng(0), n_train_crops=50,
                                                    min_side=20, max_side=200, valid_side=40,
                                                    valid_position=(0.05, 0.05))
    sides = train[:, 2] - train[:, 0]
    assert (sides == train[:, 3] - train[:, 1]).all() and sides.min() >= 20 and sides.max() <= 100
    assert (train[:, 2] <= 100).all() and (train[:, 3] <= 120).all() and (train[:, :2] >= 0).all()
    assert valid.tolist() == [[5.0, 6.0, 45.0, 46.0]]


# ----------------------------------------------------------------------------- metrics and losses

def test_macro_f1_matches_a_hand_check():
    truth = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 2, 0])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp1 fp1 fn0 -> 2/3; class 2: tp2 fp0 fn1 -> 0.8
    expected = (0.5 + 2 / 3 + 0.8) / 3
    target = np.eye(24)[truth]
    logits = np.eye(24)[predicted] * 3.0
    assert argmax_macro_f1(target, logits) == pytest.approx(expected)
    # multilabel at sigmoid > 0.5: labels absent from truth and prediction do not count
    ml_target = np.array([[1, 0, 0], [1, 1, 0]])
    ml_logits = np.array([[2.0, -1.0, -1.0], [2.0, -1.0, -1.0]])
    assert thresholded_macro_f1(ml_target, ml_logits) == pytest.approx((1.0 + 0.0) / 2)


def test_multilabel_is_scored_by_the_argmax_the_ensemble_uses():
    # an under-trained focal-loss model: every sigmoid below 0.5, yet the right class on top
    truth = np.array([0, 3, 7, 3])
    target = np.eye(24)[truth]
    target[:, 23] = 0
    logits = np.full((4, 24), -4.0)
    logits[np.arange(4), truth] = -1.0
    logits[:, 23] = 5.0  # the Background logit never counts
    assert thresholded_macro_f1(target, logits) == 0.0
    assert argmax_macro_f1(target, logits) == 1.0
    # images with two classes and background items are left out of the argmax score
    two = target.copy()
    two[0, 5] = 1
    assert argmax_macro_f1(two, logits) == 1.0
    spec = _spec(kind="multilabel", loss="focal_bce", background=True)
    assert selection_score(spec, target, logits) == 1.0
    loss_spec = _spec(kind="multilabel", loss="focal_bce", background=True, selection="val_loss")
    assert selection_score(loss_spec, target, logits) == pytest.approx(
        -batch_loss(loss_spec, torch.tensor(logits), torch.tensor(target)).item())


def test_focal_bce_is_the_winners_formula():
    spec = _spec(kind="multilabel", loss="focal_bce", focal_alpha=0.7, focal_gamma=2.0)
    logits = torch.tensor([[2.0, -1.0]])
    target = torch.tensor([[1.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = (0.7 * (1 - p) ** 2 * -torch.log(p)).mean()
    assert batch_loss(spec, logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_and_cutmix_are_active_when_configured():
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    assert make_mixer(_spec(mix_prob=0.0)) is None
    np.random.seed(0)
    mixup = make_mixer(_spec(mix_prob=1.0, cutmix_switch_prob=0.0))
    mixed = x.clone()
    lam = mix_batch(mixup, mixed)
    assert 0.0 <= lam < 1.0
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0))
    cutmix = make_mixer(_spec(mix_prob=1.0, cutmix_switch_prob=1.0))
    cut = x.clone()
    lam = mix_batch(cutmix, cut)
    changed = (cut != x)[:, 0].float().mean().item()
    assert lam < 1.0 and changed == pytest.approx(1 - lam, abs=1e-6)


def test_augmentation_is_seeded_and_can_be_turned_off():
    x = torch.rand(6, 3, 16, 16)
    first = augment_batch(x.clone(), torch.Generator().manual_seed(1), 1.0)
    second = augment_batch(x.clone(), torch.Generator().manual_seed(1), 1.0)
    assert torch.equal(first, second) and not torch.equal(first, x)
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert torch.equal(augment_batch(x.clone(), torch.Generator().manual_seed(1), 0.0), x)


# ----------------------------------------------------------------------------- training

@pytest.mark.slow
def test_training_lowers_the_loss_and_learns_the_colours(tmp_path, dataset):
    spec = _spec(epochs=4, mix_prob=0.0, augment_strength=0.0)
    arrays, train, valid = _fold_data(dataset, spec)
    summary = train_fold(spec, arrays, train, valid, tmp_path, fold=0, settings=SETTINGS)
    losses = summary["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert summary["best_val_score"] > 0.5 and summary["mixed_batch_share"] == 0.0
    assert (tmp_path / BEST_FILE).exists() and (tmp_path / STATE_FILE).exists()


@pytest.mark.slow
def test_logits_tables_have_the_documented_schema(tmp_path, dataset):
    spec = _spec(epochs=1)
    schema = tables.logits_schema(len(CLASSES))
    summaries = []
    for fold in range(N_FOLDS):
        summaries.append(run_train_fold(spec, fold, main_cache=dataset["cache"], truth=dataset["crops"],
                                        out_dir=tmp_path / f"fold{fold}", oof_path=tmp_path / f"oof{fold}.parquet",
                                        settings=SETTINGS, background_cache=None, init=[],
                                        test_path=tmp_path / f"test{fold}.parquet"))
    assert summaries[0]["mixed_batch_share"] > 0  # mix_prob 0.5 by default
    result = evaluation.predict_classifier(
        fold_oof=[tmp_path / f"oof{f}.parquet" for f in range(N_FOLDS)],
        fold_test=[tmp_path / f"test{f}.parquet" for f in range(N_FOLDS)], oof=tmp_path / "oof.parquet",
        test=tmp_path / "test.parquet", spec=_entry(epochs=1))
    # the test logits are the fold mean, as predicting with every fold's best weights gives
    arrays, main, _, _ = load_items(spec, dataset["cache"], dataset["crops"])
    direct = predict_test([tmp_path / f"fold{f}" / BEST_FILE for f in range(N_FOLDS)], arrays,
                          main.subset(main.role == "test"), settings=SETTINGS)
    oof = tables.read_table(tmp_path / "oof.parquet", schema)
    test = tables.read_table(tmp_path / "test.parquet", schema)
    assert oof.columns.tolist()[:6] == ["id", "name", "fold", "trustii_id", "truth", "truth_labels"]
    assert oof.columns.tolist()[6:] == [f"logit_{k}" for k in range(len(CLASSES))]
    train_crops = dataset["crops"][dataset["crops"]["split"] == "train"]
    assert sorted(oof["id"]) == sorted(train_crops["crop_id"]) and set(oof["fold"]) == set(range(N_FOLDS))
    assert (oof["truth"] == train_crops.set_index("crop_id").loc[oof["id"], "class_idx"].to_numpy()).all()
    assert len(test) == 6 and (test["fold"] == -1).all() and (test["truth"] == -1).all()
    assert sorted(test["trustii_id"]) == list(range(1036, 1042))
    assert np.allclose(frame_logits(test), direct, atol=1e-5)
    assert result["test_rows"] == 6 and result["oof_rows"] == len(train_crops)
    evaluated = evaluate_oof(spec, oof)
    from sklearn.metrics import f1_score
    assert evaluated["oof_macro_f1"] == pytest.approx(
        f1_score(oof["truth"], frame_logits(oof).argmax(1), average="macro"), abs=1e-6)
    assert set(evaluated["fold_macro_f1"]) == set(range(N_FOLDS)) and evaluated["per_class_f1"]["PNN"]["support"] == 12


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_weights(tmp_path, dataset):
    spec = _spec(epochs=3)
    arrays, train, valid = _fold_data(dataset, spec, fold=1)
    train_fold(spec, arrays, train, valid, tmp_path / "straight", fold=1, settings=SETTINGS)

    class Killed(RuntimeError):
        pass

    def kill_after_first_epoch(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_fold(spec, arrays, train, valid, tmp_path / "killed", fold=1, settings=SETTINGS,
                   on_epoch_end=kill_after_first_epoch)
    assert not (tmp_path / "killed" / BEST_FILE).exists()
    resumed = train_fold(spec, arrays, train, valid, tmp_path / "killed", fold=1, settings=SETTINGS)
    straight, again = _weights(tmp_path / "straight" / BEST_FILE), _weights(tmp_path / "killed" / BEST_FILE)
    assert all(torch.equal(straight[key], again[key]) for key in straight)
    assert len(resumed["train_losses"]) == 3


@pytest.mark.slow
def test_two_runs_give_identical_logits_on_cpu(tmp_path, dataset):
    spec = _spec(epochs=1)
    arrays, train, valid = _fold_data(dataset, spec, fold=2)
    logits = []
    for run in ("a", "b"):
        train_fold(spec, arrays, train, valid, tmp_path / run, fold=2, settings=SETTINGS)
        _, model = load_best(tmp_path / run / BEST_FILE)
        logits.append(predict_logits(model, arrays, valid, batch_size=8, device=torch.device("cpu"),
                                     tta="hflip"))
    assert np.array_equal(logits[0], logits[1])


def test_background_class_adds_a_24th_output_kept_out_of_the_oof(tmp_path, dataset):
    rng = np.random.default_rng(2)
    rows = []
    for k in range(6):
        path = tmp_path / f"bg{k}.png"
        speckle = rng.integers(0, 20, (72, 72, 3), dtype=np.uint8)
        Image.fromarray(np.full((72, 72, 3), 225, dtype=np.uint8) + speckle).save(path)
        rows.append({"name": f"bg{k}.png", "path": str(path), "fold": k % N_FOLDS})
    bg_cache = (tmp_path / "bg.shard", tmp_path / "bg.parquet")
    _build_cache("background_crops", *bg_cache, images=dataset["images"], backgrounds=pd.DataFrame(rows),
                 per_image=2, min_side=20, max_side=60, valid_side=30)
    spec = _spec(epochs=1, background=True)
    assert spec.n_outputs == 24 and spec.class_names[-1] == "Background"
    summary = run_train_fold(spec, 0, main_cache=dataset["cache"], truth=dataset["crops"],
                             background_cache=bg_cache, out_dir=tmp_path / "fold0",
                             oof_path=tmp_path / "oof0.parquet", settings=SETTINGS, init=[])
    assert summary["n_train_background"] == 4 * 2 and summary["n_valid_background"] == 2
    oof = tables.read_table(tmp_path / "oof0.parquet", tables.logits_schema(24))
    assert len(oof) == summary["n_valid"] - 2 and not oof["id"].str.startswith("bg").any()


def test_multilabel_model_on_whole_images(tmp_path, dataset):
    spec = _spec(kind="multilabel", loss="focal_bce", epochs=1, tta="none")
    truth = image_labels(dataset["boxes"], dataset["folds"])
    summary = run_train_fold(spec, 0, main_cache=dataset["image_cache"], truth=truth, out_dir=tmp_path / "f0",
                             oof_path=tmp_path / "oof0.parquet", settings=SETTINGS, background_cache=None,
                             init=[])
    oof = tables.read_table(tmp_path / "oof0.parquet", tables.logits_schema(23))
    assert (oof["id"] == oof["name"]).all() and (oof["truth"] >= 0).all()
    assert oof["truth_labels"].tolist() == oof["truth"].astype(str).tolist()
    # the kept checkpoint is the best validation argmax F1, and the OOF figure is that same score
    checks = [point["val_score"] for point in summary["history"] if "val_score" in point]
    assert summary["best_val_score"] == pytest.approx(max(checks), abs=1e-6)
    assert summary["oof_macro_f1"] == pytest.approx(summary["best_val_score"], abs=1e-6)
    assert summary["oof_macro_f1"] == pytest.approx(
        argmax_macro_f1(frame_targets(oof, 23), frame_logits(oof)), abs=1e-6)


# ----------------------------------------------------------------------------- fine-tuning stages

def test_init_from_starts_from_the_other_models_fold_weights(tmp_path, dataset):
    first = _spec(name="stage1", epochs=1)
    arrays, train, valid = _fold_data(dataset, first, fold=0)
    train_fold(first, arrays, train, valid, tmp_path / "stage1", fold=0, settings=SETTINGS)
    saved = _weights(tmp_path / "stage1" / BEST_FILE)
    same_head = initial_model(_spec(name="stage2", init_from="stage1"), [tmp_path / "stage1" / BEST_FILE])
    assert all(torch.equal(value, saved[key]) for key, value in same_head.state_dict().items())
    wider = initial_model(_spec(name="stage2_bg", init_from="stage1", background=True),
                          [tmp_path / "stage1" / BEST_FILE])
    state = wider.state_dict()
    assert all(torch.equal(state[key], saved[key]) for key in saved if not key.startswith("head."))
    assert state["head.weight"].shape[0] == 24
    # its own epochs and lr: a second stage trains on from there and reports where it started
    second = _spec(name="stage2", init_from="stage1", epochs=1, lr=1e-4)
    summary = train_fold(second, arrays, train, valid, tmp_path / "stage2", fold=0, settings=SETTINGS,
                         init=[str(tmp_path / "stage1" / BEST_FILE)])
    assert summary["init_from"] == "stage1" and summary["epochs"] == 1
    with pytest.raises(ValueError, match="init_from names the model itself"):
        _spec(name="loop", init_from="loop")


# ----------------------------------------------------------------------------- configuration

def test_every_config_model_is_a_valid_spec():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    item_keys = set(schema["properties"]["classifiers"]["properties"]["models"]["items"]["properties"])
    assert item_keys == {f.name for f in fields(ClassifierSpec)}
    for path in [*sorted((REPO / "config").glob("*.yaml")), REPO / "tests" / "configs" / "tiny.yaml"]:
        if path.name == "schema.yaml":
            continue
        section = yaml.safe_load(path.read_text()).get("classifiers", {})
        for entry in section.get("models", []):
            spec = ClassifierSpec.from_config(with_defaults(entry, DEFAULTS))
            assert replace(spec).n_outputs in (23, 24)


def test_logits_schema_expands_the_placeholder():
    schema = tables.logits_schema(24)
    assert schema.column_names[-24:] == [f"logit_{k}" for k in range(24)]
    assert tables.LOGIT_PLACEHOLDER in tables.LOGITS.column_names


def test_spec_has_no_defaults_of_its_own():
    assert all(field.default is field.default_factory for field in fields(ClassifierSpec))
    with pytest.raises(ValueError, match="missing key"):
        ClassifierSpec.from_config({"name": "x", "backbone": "resnet10t", "kind": "multiclass", "img_size": 32,
                                    "epochs": 1, "batch_size": 2, "lr": 0.1})


def test_cuda_out_of_memory_is_retried_with_half_the_batch():
    seen = []

    def run(spec):
        seen.append(spec.batch_size)
        if spec.batch_size > 8:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return {"model": spec.name}

    summary = stage.with_halved_batch_on_oom(_spec(batch_size=32), run)
    assert seen == [32, 16, 8] and summary["batch_size_used"] == 8
    with pytest.raises(torch.OutOfMemoryError):
        stage.with_halved_batch_on_oom(_spec(batch_size=2), lambda spec: (_ for _ in ()).throw(
            torch.OutOfMemoryError("always")))


def test_pseudo_labels_join_the_training_of_their_fold_only(tmp_path, dataset):
    from leukoflow.classification import pseudo_labels

    test_ids = dataset["crops"].loc[dataset["crops"]["split"] == "test", "crop_id"].tolist()
    table = pd.DataFrame({"crop_id": test_ids[:4], "name": [i.split("#")[0] for i in test_ids[:4]],
                          "fold": [0, 0, 1, 1], "class_idx": [0, 3, 7, 7], "confidence": 0.99})
    spec = _spec(epochs=1)
    summary = run_train_fold(spec, 0, main_cache=dataset["cache"], truth=dataset["crops"],
                             out_dir=tmp_path / "f0", oof_path=tmp_path / "oof0.parquet", settings=SETTINGS,
                             background_cache=None, init=[], test_path=tmp_path / "test0.parquet", pseudo=table)
    assert summary["pseudo_labels"] == 2
    oof = tables.read_table(tmp_path / "oof0.parquet", tables.logits_schema(len(CLASSES)))
    assert not set(oof["id"]) & set(test_ids)
    test = tables.read_table(tmp_path / "test0.parquet", tables.logits_schema(len(CLASSES)))
    assert sorted(test["id"]) == sorted(test_ids)
    _, main, _, _ = load_items(spec, dataset["cache"], dataset["crops"])
    items = pseudo_labels.pseudo_items(main, table, 1, spec.n_outputs)
    assert sorted(items.ids) == sorted(test_ids[2:4]) and (items.target.argmax(1) == 7).all()
