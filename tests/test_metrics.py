import math

import pytest
import torch

from rayseg.engine.metrics import ConfusionMatrix, format_metrics_table
from rayseg.ignore import IGNORE_INDEX


def test_hand_made_confusion_matrix_with_ignore_and_absent_class():
    # 4 classes; class 3 never appears in labels or predictions -> NaN IoU, left out of the mean.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 1]])  # the two ignore pixels carry junk predictions
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = cm.compute(["a", "b", "c", "d"])
    # class 0: TP 1, FP 1 (a class-2 pixel), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    assert m["per_class_iou"]["a"] == pytest.approx(1 / 3)
    assert m["per_class_iou"]["b"] == pytest.approx(2 / 3)
    assert m["per_class_iou"]["c"] == pytest.approx(1 / 2)
    assert m["per_class_iou"]["d"] is None
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["num_pixels"] == 6


def test_class_only_predicted_counts_as_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 2]), torch.tensor([0, 0]))
    m = cm.compute()
    assert m["per_class_iou"]["2"] == 0.0  # predicted but never true: IoU 0, part of the mean
    assert m["per_class_iou"]["1"] is None
    assert m["miou"] == pytest.approx((0.5 + 0.0) / 2)


def test_updates_accumulate_and_reject_bad_labels():
    cm = ConfusionMatrix(2)
    for _ in range(3):
        cm.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    assert cm.matrix.tolist() == [[0, 3], [0, 3]]
    with pytest.raises(ValueError, match="outside 0..1"):
        cm.update(torch.tensor([0]), torch.tensor([5]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))


def test_everything_ignored_gives_nan():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([IGNORE_INDEX, IGNORE_INDEX]))
    m = cm.compute()
    assert math.isnan(m["miou"]) and math.isnan(m["pixel_accuracy"])


def test_table_lists_classes_and_means():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    table = format_metrics_table(cm.compute(["bg", "cat"]))
    assert "cat" in table and "mIoU" in table and "50.00" in table
