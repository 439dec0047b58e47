"""Box operations: GIoU matching, NMS, weighted boxes fusion, top-N fitting, rounding, crop windows."""

from __future__ import annotations

import numpy as np
import pytest

from leukoflow import boxes


def test_giou_matrix_known_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [0, 0, 5, 10], [20, 0, 30, 10]])
    # identical: 1; half overlap: IoU 0.5, no gap; disjoint 10 px apart: 0 - (300 - 200) / 300
    np.testing.assert_allclose(boxes.giou_matrix(a, b), [[1.0, 0.5, -1 / 3]])


def test_giou_matrix_empty_shapes():
    assert boxes.giou_matrix(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert boxes.giou_matrix(np.array([[0, 0, 1, 1]]), np.zeros((0, 4))).shape == (1, 0)


def test_best_giou_match_takes_first_on_ties_and_handles_no_prediction():
    truth = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])
    predictions = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [49, 49, 61, 61]])
    index, giou = boxes.best_giou_match(truth, predictions)
    assert index.tolist() == [0, 2]
    assert giou[0] == pytest.approx(1.0)
    index, giou = boxes.best_giou_match(truth, np.zeros((0, 4)))
    assert index.tolist() == [-1, -1] and giou.tolist() == [-1.0, -1.0]


def test_nms_keeps_highest_of_overlapping():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [30, 30, 40, 40]])
    assert boxes.nms(xyxy, np.array([0.5, 0.9, 0.3]), 0.3).tolist() == [1, 2]
    assert boxes.nms(np.zeros((0, 4)), np.zeros(0), 0.3).tolist() == []


def test_wbf_fuses_overlapping_boxes_to_score_weighted_mean():
    xyxy = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6], [0.7, 0.7, 0.9, 0.9]])
    scores = np.array([0.9, 0.3, 0.6])
    fused, fused_scores = boxes.weighted_boxes_fusion(xyxy, scores, iou_threshold=0.25, skip_threshold=1e-4)
    # boxes 0 and 1 overlap at IoU 0.39 > 0.25: coordinates weighted 0.9:0.3, score = mean member score
    np.testing.assert_allclose(fused[0], (0.9 * xyxy[0] + 0.3 * xyxy[1]) / 1.2)
    np.testing.assert_allclose(fused_scores, [0.6, 0.6])
    np.testing.assert_allclose(fused[1], xyxy[2])


@pytest.mark.parametrize(
    "iou_threshold, expected_clusters",
    [
        (0.25, 1),  # IoU 0.39 is above: fused
        (0.5, 2),  # below: kept apart
    ],
)
def test_wbf_threshold_is_strict(iou_threshold, expected_clusters):
    xyxy = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]])
    fused, _ = boxes.weighted_boxes_fusion(xyxy, np.array([0.9, 0.3]), iou_threshold=iou_threshold,
                                           skip_threshold=0.0)
    assert len(fused) == expected_clusters


def test_wbf_drops_low_scores_and_zero_area_and_handles_empty():
    xyxy = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.2, 0.6]])
    fused, scores = boxes.weighted_boxes_fusion(xyxy, np.array([0.00001, 0.9]), iou_threshold=0.25,
                                                skip_threshold=1e-4)
    assert fused.shape == (0, 4) and scores.shape == (0,)


def test_normalise_clips_and_denormalise_inverts():
    xyxy = np.array([[-5.0, 10.0, 50.0, 120.0]])
    norm = boxes.normalise(xyxy, 100, 100)
    np.testing.assert_allclose(norm, [[0.0, 0.1, 0.5, 1.0]])
    np.testing.assert_allclose(boxes.denormalise(norm, 100, 100), [[0, 10, 50, 100]])


def test_round_and_clip_rounds_half_to_even_and_clips_to_last_pixel():
    out = boxes.round_and_clip(np.array([[0.5, 1.5, 99.7, 250.0]]), 100, 200)
    np.testing.assert_array_equal(out, [[0, 2, 99, 199]])


def test_top_n_orders_by_score_then_area():
    xyxy = np.array([[0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 5, 5]])
    kept, scores, padded = boxes.top_n_with_padding(xyxy, np.array([0.5, 0.5, 0.9]), 2, 100, 100)
    np.testing.assert_array_equal(kept, [[0, 0, 5, 5], [0, 0, 20, 20]])
    assert scores.tolist() == [0.9, 0.5] and not padded.any()


def test_top_n_pads_with_full_image_box():
    kept, scores, padded = boxes.top_n_with_padding(np.array([[1, 1, 5, 5]]), np.array([0.7]), 3, 64, 48)
    np.testing.assert_array_equal(kept[1:], [[0, 0, 63, 47], [0, 0, 63, 47]])
    assert scores.tolist() == [0.7, 0.0, 0.0] and padded.tolist() == [False, True, True]


def test_top_n_of_nothing():
    kept, scores, padded = boxes.top_n_with_padding(np.zeros((0, 4)), np.zeros(0), 0, 10, 10)
    assert kept.shape == (0, 4) and len(scores) == 0 and len(padded) == 0


@pytest.mark.parametrize(
    "box, expected",
    [
        ([40, 40, 60, 60], [24, 24, 76, 76]),  # 16 px each side, inside
        ([5, 10, 95, 90], [0, 0, 100, 100]),  # clipped to the image on every side
    ],
)
def test_expand_and_clip_margin(box, expected):
    np.testing.assert_array_equal(boxes.expand_and_clip(np.array(box), 16, 100, 100)[0], expected)


def test_full_image_box_never_degenerate():
    np.testing.assert_array_equal(boxes.full_image_box(1, 1), [0, 0, 1, 1])


def test_numpy_iou_and_giou_equal_torchvision_bit_for_bit():
    import torch
    from torchvision import ops

    rng = np.random.default_rng(7)
    for trial in range(50):
        corner_a, corner_b = rng.uniform(0, 300, (12, 2)), rng.uniform(0, 300, (9, 2))
        a = np.concatenate([corner_a, corner_a + rng.uniform(0, 90, (12, 2))], 1)
        b = np.concatenate([corner_b, corner_b + rng.uniform(0, 90, (9, 2))], 1)
        b[:2], a[2] = a[:2], [5.0, 5.0, 5.0, 5.0]  # identical boxes and an empty one (0/0 -> nan)
        if trial % 2:
            a, b = np.round(a), np.round(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        assert np.array_equal(boxes.iou_matrix(a, b), ops.box_iou(ta, tb).numpy(), equal_nan=True)
        assert np.array_equal(boxes.giou_matrix(a, b), ops.generalized_box_iou(ta, tb).numpy(), equal_nan=True)
