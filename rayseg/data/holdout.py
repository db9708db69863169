"""``data.holdout``: tune on the training split alone. A fixed random choice of its images (by ``data.seed``) is
held out as the evaluation set and the rest is trained on, so that a hyperparameter search never sees the images
a result is later judged on."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from rayseg.config import ConfigError


class HeldOutImages(Dataset):
    """The held-out ``count`` images of ``split`` (``held_out=True``) or the others, chosen by a permutation seeded
    with ``seed``; the two parts are disjoint and together are the whole split."""

    def __init__(self, split: Dataset, count: int, seed: int, held_out: bool):
        if not 0 < count < len(split):
            raise ConfigError(f"{count} leaves no training image of the {len(split)} in the training split",
                              "data.holdout")
        order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed)).tolist()
        self.indices = sorted(order[:count] if held_out else order[count:])
        self.split = split
        self.num_classes = split.num_classes
        self.class_names = split.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.split[self.indices[i]]
