"""Image-classification data for the PSSL ensemble members: the synthetic classification set or an ImageFolder.

Preprocessing matches the labelling pipeline (``rayseg.labeling.stages.decode_and_resize``, then the explainer
actor's normalisation): the image is resized to ``image_size x image_size`` with bilinear filtering (aspect ratio not kept), scaled to [0, 1] and
normalised with the ImageNet mean/std. Training adds RandomResizedCrop(scale 0.5-1) and a horizontal flip.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rayseg.config import Config, ConfigError
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ClassificationItems", "build_classification_dataset", "classification_eval_transform",
           "classification_train_transform"]


def classification_train_transform(image_size: int) -> v2.Compose:
    """uint8 ``tv_tensors.Image`` -> normalised float32 ``3 x s x s`` plain tensor, with augmentation."""
    s = int(image_size)
    return v2.Compose([
        v2.Resize((s, s), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.RandomResizedCrop(s, scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        v2.ToPureTensor(),
    ])


def classification_eval_transform(image_size: int) -> v2.Compose:
    """What the labeling pipeline does: bilinear resize to ``s x s``, [0, 1], ImageNet normalisation."""
    s = int(image_size)
    return v2.Compose([
        v2.Resize((s, s), interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        v2.ToPureTensor(),
    ])


class ClassificationItems(Dataset):
    """A classification dataset reduced to ``{"image": float 3xHxW, "label": int}`` per item.

    Other keys (``true_mask``, ``id``) are dropped so that ``default_collate`` / ``collate_skip_bad`` stack the
    items (``label`` becomes int64); bad-sample markers of ``skip_bad`` datasets pass through unchanged.
    """

    def __init__(self, base: Dataset):
        self.base = base
        self.num_classes: int = int(base.num_classes)
        self.class_names: list[str] = list(base.class_names)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def bad_samples(self) -> dict[str, str]:
        return getattr(self.base, "bad_samples", {})

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        if item is None or item.get("bad"):
            return item
        return {"image": item["image"], "label": int(item["label"])}


def build_classification_dataset(cfg: Config, train: bool = True, split: str = "train",
                                 num_images: int | None = None) -> ClassificationItems:
    """The classifier's data: ``classifier.images`` (ImageFolder) when set, else the synthetic set.

    ``train`` picks the augmenting or the plain (labeling-like) transform; ``split`` / ``num_images`` apply to the
    synthetic set only (default ``classifier.num_images``)."""
    from rayseg.data.folders import ImageFolderClassification
    from rayseg.data.synthetic import SyntheticClassification

    c = cfg.classifier
    transform = classification_train_transform(c.image_size) if train else classification_eval_transform(c.image_size)
    if c.images:
        base = ImageFolderClassification(c.images, transform=transform, skip_bad=cfg.data.skip_bad)
        if len(base) == 0:
            raise ConfigError(f"classifier.images: no images in {c.images}")
    else:
        n = c.num_images if num_images is None else num_images
        base = SyntheticClassification(num_images=n, image_size=c.image_size, seed=cfg.data.seed, split=split,
                                       transform=transform)
    return ClassificationItems(base)
