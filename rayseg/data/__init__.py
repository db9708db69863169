"""Datasets and transforms. Every segmentation dataset yields ``{"image": float 3xHxW, "mask": int64 HxW, "id"}``
with ``IGNORE_INDEX`` (-1, :mod:`rayseg.ignore`) = ignore; see ``synthetic`` (the embedded benchmark), ``folders``
(VOC and ImageFolder trees), ``native`` (ADE20K, Cityscapes, COCO-Stuff in their own layouts) and ``transforms``
(joint image/mask augmentation)."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from rayseg.config import DataSection
from rayseg.data.errors import BadSampleError
from rayseg.data.folders import ImageFolderClassification, VOCSegmentationFolder, collate_skip_bad
from rayseg.data.holdout import HeldOutImages
from rayseg.data.native import NATIVE_KINDS, build_native
from rayseg.data.synthetic import SyntheticClassification, SyntheticSegmentation
from rayseg.data.transforms import SegEvalTransform, SegTrainTransform


def segmentation_transform(data: DataSection, train: bool):
    """The joint image/mask transform of the ``data`` section: augmenting for training, plain for evaluation."""
    if train:
        return SegTrainTransform(crop_size=data.crop_size, base_size=data.base_size or None,
                                 scale_range=(data.scale_min, data.scale_max), hflip_prob=data.hflip,
                                 color_jitter=data.color_jitter)
    return SegEvalTransform()


def build_segmentation_dataset(data: DataSection, train: bool) -> Dataset:
    """The training (augmented) or evaluation split described by the ``data`` config section."""
    return read_segmentation_split(data, train, segmentation_transform(data, train))


def read_segmentation_split(data: DataSection, train: bool, transform: Callable | None) -> Dataset:
    """The reader of ``data.kind`` for the training or the evaluation split, with the joint ``transform`` (None:
    float image in [0, 1] and int64 mask, as read). With ``data.holdout``, both come from the training split:
    :class:`HeldOutImages`."""
    if data.holdout:
        return HeldOutImages(_read_split(data, True, transform), data.holdout, data.seed, held_out=not train)
    return _read_split(data, train, transform)


def _read_split(data: DataSection, train: bool, transform: Callable | None) -> Dataset:
    split = data.train_split if train else data.val_split
    if data.kind == "synthetic":
        return SyntheticSegmentation(domain=data.domain, split=split,
                                     num_images=data.num_train if train else data.num_val,
                                     image_size=data.image_size, seed=data.seed, transform=transform)
    if data.kind in NATIVE_KINDS:
        return build_native(data.kind, data.root, split, transform, data.skip_bad, data.class_names)
    if data.kind == "voc":
        return VOCSegmentationFolder(data.root, split=split, num_classes=data.num_classes, transform=transform,
                                     label_map=data.label_map or None, class_names=data.class_names or None,
                                     skip_bad=data.skip_bad)
    if data.kind == "images":
        raise ValueError("data.kind: images has no masks; it is for pixcon and densecl pre-training")
    raise ValueError(f"data.kind: unknown dataset kind {data.kind!r}")


__all__ = [
    "BadSampleError", "HeldOutImages", "ImageFolderClassification", "SegEvalTransform", "SegTrainTransform",
    "SyntheticClassification", "SyntheticSegmentation", "VOCSegmentationFolder", "build_segmentation_dataset",
    "read_segmentation_split",
    "collate_skip_bad",
]
