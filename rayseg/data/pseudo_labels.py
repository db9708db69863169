"""PSSL pseudo-labels as a segmentation dataset: the images of an ImageFolder tree with the masks that their
committed label shards (:mod:`rayseg.labeling.shards`, written by ``rayseg label``) give them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from rayseg import storage
from rayseg.data.errors import BadSampleError
from rayseg.data.folders import SkipBadMixin, load_rgb
from rayseg.data.transforms import to_float_pair
from rayseg.ignore import IGNORE_INDEX
from rayseg.labeling import shards
from rayseg.labeling.ensemble import pseudo_label
from rayseg.labeling.geometry import NO_DECILE, deciles_on_image

__all__ = ["PSSLDataset"]


def _folder_class_names(images_root: Path, num_classes: int) -> list[str]:
    """The sorted class sub-folders of an ImageFolder tree when there are exactly K of them, else class{i}."""
    try:
        folders = sorted(e.name for e in os.scandir(images_root) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        folders = []
    return folders if len(folders) == num_classes else [f"class{i}" for i in range(num_classes)]


class PSSLDataset(SkipBadMixin, Dataset):
    """Images of an ImageFolder tree with their PSSL pseudo-masks from committed label shards.

    ``labels_dir``: the label-version folder, a path or an object-store URI (:mod:`rayseg.storage`); its shards
    are read once, here. ``images_root``: a local folder (or one every node mounts).

    Item ``i``: ``{"image": float 3xHxW, "mask": int64 HxW, "id": str}``. The mask is built from the decile map
    (laid back onto the image as ``label.geometry`` placed it, nearest; methods.md §3.1 item 7; pixels outside an
    explained crop are ignore) by :func:`rayseg.labeling.ensemble.pseudo_label`:
    ``D >= threshold`` -> the image's class, ``D = threshold-1`` -> ``IGNORE_INDEX`` when ``ignore_d8``, the rest -> K
    (background); ``transform(image, mask)`` is a joint transform (crop padding of the mask = ``IGNORE_INDEX``).
    ``num_classes`` is K+1; ``class_names`` the K class names + ``"background"``. A missing or corrupt image (or
    decile PNG) raises ``BadSampleError`` naming it, or with ``skip_bad`` comes back as a marker for
    ``collate_skip_bad`` and is recorded in ``bad_samples``.
    """

    def __init__(
        self,
        labels_dir: str | os.PathLike,
        images_root: str | os.PathLike,
        num_classes: int,
        transform: Callable | None = None,
        threshold: int = 9,
        ignore_d8: bool = False,
        skip_bad: bool = False,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 1 <= threshold <= 9:
            raise ValueError(f"threshold must be in 1..9, got {threshold}")
        self.labels_dir, self.images_root = str(labels_dir), Path(images_root)
        manifests = shards.committed_shards(self.labels_dir)
        table = shards.read_labels(self.labels_dir, columns=["id", "class_index", "deciles_png"], manifests=manifests)
        self.geometry = shards.geometry_of(manifests)  # how the decile maps lie on the images
        if table.num_rows == 0:
            raise ValueError(f"no committed label shards in {self.labels_dir}: run `rayseg label` first")
        # plain python lists: cheap to pickle to DataLoader workers (no Arrow table)
        self.ids: list[str] = table.column("id").to_pylist()
        self.class_index: list[int] = table.column("class_index").to_pylist()
        self.deciles_png: list[bytes] = table.column("deciles_png").to_pylist()
        bad = sorted({c for c in self.class_index if not 0 <= c < num_classes})
        if bad:
            raise ValueError(f"labels in {self.labels_dir} have class indices {bad[:5]} outside 0..{num_classes - 1} "
                             f"(pssl.num_classes = {num_classes})")
        self.num_image_classes = int(num_classes)  # K
        self.num_classes = self.num_image_classes + 1  # K + 1: index K = background
        self.class_names = _folder_class_names(self.images_root, self.num_image_classes) + ["background"]
        self.transform, self.threshold, self.ignore_d8 = transform, int(threshold), bool(ignore_d8)
        self.skip_bad, self.bad_samples = bool(skip_bad), {}

    def __len__(self) -> int:
        return len(self.ids)

    def pseudo_mask(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """The int64 ``size`` pseudo-mask of item ``i`` (before any transform)."""
        try:
            deciles = shards.decode_deciles(self.deciles_png[i])
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on a corrupt PNG
            raise BadSampleError(self._label_of(i), f"cannot decode the decile map ({exc})") from None
        if deciles.ndim != 2 or deciles.shape[0] != deciles.shape[1]:
            raise BadSampleError(self._label_of(i), f"decile map of shape {tuple(deciles.shape)}, not S x S")
        on_image = torch.from_numpy(deciles_on_image(deciles, size[0], size[1], self.geometry))
        label = pseudo_label(on_image, self.class_index[i], background_index=self.num_image_classes,
                             threshold=self.threshold, ignore_d8=self.ignore_d8, ignore_index=IGNORE_INDEX)
        return label.masked_fill_(on_image == NO_DECILE, IGNORE_INDEX)  # outside the explained crop

    def _label_of(self, i: int) -> str:
        """The name of item ``i``'s label in error messages: ``<labels_dir>/<id>``."""
        return storage.join(self.labels_dir, self.ids[i])

    def __getitem__(self, i: int) -> dict:
        return self._load_or_mark(self.ids[i], lambda: self._load(i))

    def _load(self, i: int) -> dict:
        image_id = self.ids[i]
        rgb = load_rgb(self.images_root / image_id)  # BadSampleError naming the file when missing / corrupt
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        mask = self.pseudo_mask(i, (image.shape[1], image.shape[2]))
        if self.transform is not None:
            image_t, mask_t = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        else:
            image_t, mask_t = to_float_pair(image, mask)
        return {"image": image_t, "mask": mask_t, "id": image_id}
