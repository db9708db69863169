"""Label spaces of any size: with K = 1000 (PSSL on ImageNet) the classes 254, 255 and 256 are classes like any
other in every loss, the metrics, pseudo labels, crop padding, mixing and MDP; only ``IGNORE_INDEX`` is ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors

from rayseg.config import ConfigError, load_config
from rayseg.data import build_segmentation_dataset
from rayseg.data.errors import BadSampleError
from rayseg.data.folders import VOCSegmentationFolder
from rayseg.data.mixing import class_mix_mask
from rayseg.data.transforms import SegTrainTransform
from rayseg.engine.metrics import ConfusionMatrix
from rayseg.ignore import IGNORE_INDEX
from rayseg.labeling.ensemble import pseudo_label
from rayseg.methods.mdp import PixelPrototypeContrast, PrototypeMemory
from rayseg.methods.pssl import BackgroundWeightedCrossEntropy
from rayseg.methods.ssa_losses import MaskDiceLoss, ResponseDistillationLoss

K = 1000
CLASSES = (254, 255, 256)


def target_with_the_three_classes() -> torch.Tensor:
    """1 x 2 x 4: classes 254, 255, 256, the background K, and two ignored pixels."""
    return torch.tensor([[[254, 255, 256, K], [255, IGNORE_INDEX, 254, IGNORE_INDEX]]])


def test_ignore_is_no_class_id_of_any_size():
    assert IGNORE_INDEX < 0  # class ids are 0..K-1 for every K, 65,535 included


def test_background_weighted_ce_counts_254_255_256_with_the_hand_value():
    torch.manual_seed(0)
    logits = torch.randn(1, K + 1, 2, 4, dtype=torch.float64, requires_grad=True)
    target = target_with_the_three_classes()
    loss = BackgroundWeightedCrossEntropy(num_classes=K, bg_weight=0.1)(logits, target)
    log_p = torch.log_softmax(logits.detach(), dim=1)[0]
    terms = [(0.1 if int(y) == K else 1.0, -float(log_p[int(y), i, j]))
             for (i, j), y in zip([(i, j) for i in range(2) for j in range(4)], target[0].flatten())
             if int(y) != IGNORE_INDEX]
    assert len(terms) == 6  # the three classes (255 twice, 254 twice) and the background: nothing dropped
    expected = sum(w * t for w, t in terms) / sum(w for w, _ in terms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # the loss computes in float32
    loss.backward()
    grad = logits.grad[0].abs().sum(0)
    assert (grad[target[0] != IGNORE_INDEX] > 0).all() and (grad[target[0] == IGNORE_INDEX] == 0).all()


def test_plain_cross_entropy_with_the_one_ignore_value():
    torch.manual_seed(1)
    logits = torch.randn(1, K + 1, 2, 4, dtype=torch.float64)
    target = target_with_the_three_classes()
    log_p = torch.log_softmax(logits, dim=1)[0]
    valid = [(i, j) for i in range(2) for j in range(4) if int(target[0, i, j]) != IGNORE_INDEX]
    expected = sum(-float(log_p[int(target[0, i, j]), i, j]) for i, j in valid) / len(valid)
    got = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    assert abs(got.item() - expected) < 1e-9


def test_miou_counts_each_of_254_255_256():
    cm = ConfusionMatrix(K + 1)
    target = target_with_the_three_classes()
    prediction = target.clamp_min(0).clone()
    prediction[0, 1, 2] = 256  # one pixel of 254 predicted as 256
    cm.update(prediction, target)
    metrics = cm.compute()
    iou = metrics["per_class_iou"]
    assert iou["254"] == 0.5 and iou["255"] == 1.0 and iou["256"] == 0.5 and iou[str(K)] == 1.0
    assert metrics["num_pixels"] == 6 and metrics["miou"] == (0.5 + 1.0 + 0.5 + 1.0) / 4
    assert iou["253"] is None  # absent classes stay out of the mean


def test_pseudo_labels_of_class_255_and_crop_padding():
    deciles = torch.tensor([[9, 9, 3], [0, 8, 9]])
    label = pseudo_label(deciles, class_id=255, background_index=K, ignore_d8=True)
    assert label.tolist() == [[255, 255, K], [K, IGNORE_INDEX, 255]]
    image = tv_tensors.Image(torch.randint(0, 256, (3, 2, 3), dtype=torch.uint8))
    transform = SegTrainTransform(crop_size=8, scale_range=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.0)
    _, mask = transform(image, tv_tensors.Mask(label))
    values, counts = mask.unique(return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {IGNORE_INDEX: 64 - 6 + 1, 255: 3, K: 2}


def test_ssa_losses_count_class_255():
    torch.manual_seed(2)
    student, teacher = torch.randn(1, 300, 4, 4), torch.randn(1, 300, 4, 4)
    all_255, all_ignored = torch.full((1, 4, 4), 255), torch.full((1, 4, 4), IGNORE_INDEX)
    assert ResponseDistillationLoss(border=0)(student, teacher, all_255).item() > 0
    assert ResponseDistillationLoss(border=0)(student, teacher, all_ignored).item() == 0.0
    dice = MaskDiceLoss()
    assert dice(student, all_255).item() > 0 and dice(student, all_ignored).item() == 0.0


def test_mdp_prototypes_and_contrast_use_class_255():
    torch.manual_seed(3)
    memory = PrototypeMemory(num_classes=300, dim=8)
    z = F.normalize(torch.randn(1, 4, 8), dim=-1)  # B x N x D
    labels = torch.tensor([[254, 255, 256, IGNORE_INDEX]])
    memory.update(z, labels)
    assert memory.seen[[254, 255, 256]].all() and int(memory.seen.sum()) == 3
    similarity = torch.randn(3, 300)
    loss = PixelPrototypeContrast()(similarity, torch.tensor([254, 255, IGNORE_INDEX]), memory.seen)
    assert torch.isfinite(loss) and loss.item() > 0


def test_class_mixing_treats_255_as_a_class():
    label = torch.tensor([[255, 255, IGNORE_INDEX], [254, 256, 256]])
    chosen = set()
    for seed in range(20):
        mask = class_mix_mask(label, torch.Generator().manual_seed(seed))
        chosen |= set(label[mask].unique().tolist())
    assert chosen == {254, 255, 256}  # never the ignore value, every class at some seed


# ------------------------------------------------------------------------------------------ 16-bit mask files


def _voc_tree_16_bit(root, masks: dict[str, np.ndarray]):
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint16)).save(root / "SegmentationClass" / f"{name}.png")  # mode I;16
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{n}\n" for n in masks))
    return root


def test_a_voc_layout_dataset_of_300_classes_reads_16_bit_masks(tmp_path):
    """More than 255 classes need 16-bit mask files: 254, 255 and 256 are classes, 65535 is the file's ignore."""
    row = [0, 254, 255, 256, 299, 65535]
    root = _voc_tree_16_bit(tmp_path / "voc", {"a": np.array([row] * 3), "b": np.array([[0, 300]] * 2)})
    cfg = load_config(None, ["data.kind=voc", f"data.root={root}", "data.num_classes=300", "data.train_split=train",
                             "data.val_split=train"])
    dataset = build_segmentation_dataset(cfg.data, train=False)
    assert dataset[0]["mask"].tolist() == [[0, 254, 255, 256, 299, IGNORE_INDEX]] * 3
    with pytest.raises(BadSampleError, match=r"b\.png: label values \[300\] out of range for num_classes=300"):
        dataset[1]
    # An 8-bit label space keeps 255 as its ignore value; a 16-bit file's values past it are named.
    small = VOCSegmentationFolder(root, "train", num_classes=21)
    with pytest.raises(BadSampleError, match=r"a\.png: label values \[254, 256, 299, 65535\] out of range"):
        small[0]


def test_deeplabv3_needs_two_images_per_worker():
    with pytest.raises(ConfigError, match="train.batch_size: model.head deeplabv3 needs 2 or more images"):
        load_config(None, ["model.head=deeplabv3", "train.batch_size=1"])
    assert load_config(None, ["model.head=fcn", "train.batch_size=1"]).train.batch_size == 1
    assert load_config(None, ["model.head=deeplabv3", "train.batch_size=1", "method=pixcon"]).method == "pixcon"
