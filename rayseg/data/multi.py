"""Several segmentation datasets as one: a concatenated label space and a dataset over their union (MDP, methods.md §1.2).

Label spaces are concatenated without any manual merging: the global id of local class ``c`` of dataset ``d`` is
``c + offset_d`` with ``offset_d = Σ_{d' < d} K_{d'}``, so ``K_total = Σ_d K_d`` and the "same" class of two
datasets gets two ids. Ignored pixels are :data:`rayseg.ignore.IGNORE_INDEX` (-1) in local and global masks
alike, so a union of any size (the paper's 342 classes) never confuses a class with ignore.

Dataset specs (``mdp.datasets``) are strings:

* ``synthetic:D`` - the embedded synthetic domain ``D`` (A, B or C); ``data.num_train``, ``data.image_size`` and
  ``data.seed`` size it.
* ``voc:ROOT`` - a VOC-layout folder (``rayseg.data.folders.VOCSegmentationFolder``). Its classes are the lines of
  ``ROOT/class_names.txt`` when that file exists, else ``data.num_classes`` / ``data.class_names``;
  ``data.label_map`` and ``data.skip_bad`` apply.
* ``ade20k:ROOT``, ``cityscapes:ROOT``, ``coco_stuff:ROOT`` - a dataset in its own layout
  (:mod:`rayseg.data.native`), with its own classes (150, 19, 171); ``data.skip_bad`` applies. VOC + COCO-Stuff +
  ADE20K + Cityscapes is the paper's union.

The training augmentation of the ``data`` section (crop, scale, flip, jitter) applies to every dataset.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from rayseg.config import DataSection
from rayseg.data import build_segmentation_dataset, segmentation_transform
from rayseg.data.folders import VOCSegmentationFolder
from rayseg.data.native import NATIVE_KINDS, build_native
from rayseg.data.synthetic import DOMAINS, SyntheticSegmentation
from rayseg.ignore import IGNORE_INDEX

__all__ = ["CLASS_NAMES_FILE", "SAMPLING", "DatasetSpec", "LabelSpace", "MultiDataset", "build_multi_dataset",
           "parse_dataset_spec"]

SAMPLING = ("proportional", "balanced")
CLASS_NAMES_FILE = "class_names.txt"  # optional, in a VOC root: one class name per line, line i = label id i


# ------------------------------------------------------------------------------------------- label space


@dataclass(frozen=True)
class LabelSpace:
    """The global label table: dataset names and each dataset's class names, in order.

    ``offsets[d]`` is the global id of local class 0 of dataset ``d``; ``num_classes`` is ``K_total``.
    """

    datasets: tuple[str, ...]
    class_names: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.datasets) != len(self.class_names):
            raise ValueError(f"{len(self.datasets)} dataset names but {len(self.class_names)} class lists")
        if not self.datasets:
            raise ValueError("a label space needs at least one dataset")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"dataset names must be unique, got {list(self.datasets)}")
        for name, names in zip(self.datasets, self.class_names):
            if not names:
                raise ValueError(f"dataset {name!r} has no classes")

    @classmethod
    def build(cls, datasets: Sequence[str], class_names: Sequence[Sequence[str]]) -> LabelSpace:
        return cls(tuple(str(d) for d in datasets), tuple(tuple(str(c) for c in names) for names in class_names))

    @property
    def sizes(self) -> tuple[int, ...]:
        """``K_d`` per dataset."""
        return tuple(len(names) for names in self.class_names)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for k in self.sizes:
            out.append(total)
            total += k
        return tuple(out)

    @property
    def num_classes(self) -> int:
        return sum(self.sizes)

    @property
    def ignore_index(self) -> int:
        """The ignore value of global masks: :data:`rayseg.ignore.IGNORE_INDEX`, whatever ``K_total``."""
        return IGNORE_INDEX

    def global_id(self, dataset: int, local_id: int) -> int:
        if not 0 <= local_id < self.sizes[dataset]:
            raise ValueError(f"class {local_id} is outside 0..{self.sizes[dataset] - 1} of dataset "
                             f"{self.datasets[dataset]!r}")
        return self.offsets[dataset] + local_id

    def to_global(self, mask: torch.Tensor, dataset: int) -> torch.Tensor:
        """Local label ids of ``dataset`` -> global ids; ignored pixels stay ignored."""
        return torch.where(mask == IGNORE_INDEX, mask, mask + self.offsets[dataset])

    def global_class_names(self) -> list[str]:
        """``"<dataset>/<class>"`` for every global id."""
        return [f"{d}/{c}" for d, names in zip(self.datasets, self.class_names) for c in names]

    def class_dataset(self) -> torch.Tensor:
        """int64 ``K_total``: the dataset index of every global class id."""
        return torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (loads with ``torch.load(weights_only=True)`` and ``json``)."""
        return {"datasets": [{"name": d, "offset": o, "class_names": list(names)}
                             for d, o, names in zip(self.datasets, self.offsets, self.class_names)],
                "num_classes": self.num_classes, "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelSpace:
        entries = data["datasets"]
        space = cls.build([e["name"] for e in entries], [e["class_names"] for e in entries])
        stored = [e.get("offset") for e in entries]
        if any(o is not None for o in stored) and list(space.offsets) != stored:
            raise ValueError(f"label table offsets {stored} do not match its class counts {list(space.sizes)}")
        return space


# ------------------------------------------------------------------------------------------ dataset specs


@dataclass(frozen=True)
class DatasetSpec:
    """One parsed ``mdp.datasets`` entry: ``kind`` ("synthetic" or "voc") and its argument (domain or root)."""

    kind: str
    arg: str

    @property
    def default_name(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic_{self.arg}"
        return Path(self.arg.rstrip("/")).name or "voc"


def parse_dataset_spec(text: str) -> DatasetSpec:
    """``"synthetic:A"`` / ``"voc:/data/VOC2012"`` / ``"ade20k:/data/ADEChallengeData2016"`` ... ->
    :class:`DatasetSpec`; ValueError naming the format otherwise."""
    kind, sep, arg = str(text).partition(":")
    kind, arg = kind.strip(), arg.strip()
    if not sep or kind not in ("synthetic", "voc", *NATIVE_KINDS) or not arg:
        raise ValueError(f"dataset spec {text!r}: expected 'synthetic:DOMAIN' or 'KIND:ROOT' (KIND: voc, "
                         f"{', '.join(NATIVE_KINDS)})")
    return DatasetSpec(kind, arg)


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}_{n}", n + 1
        out.append(candidate)
    return out


def _voc_classes(root: Path, data: DataSection) -> tuple[int, list[str] | None]:
    names_file = root / CLASS_NAMES_FILE
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if names:
            return len(names), names
    if data.num_classes < 1:
        raise ValueError(f"{root}: no {CLASS_NAMES_FILE} and data.num_classes is not set; give the class count")
    return data.num_classes, list(data.class_names) or None


def build_one(spec: DatasetSpec, data: DataSection, train: bool, transform) -> Dataset:
    """The dataset of one spec with the given joint transform (the readers of ``rayseg.data``)."""
    split = data.train_split if train else data.val_split
    if spec.kind == "synthetic":
        if spec.arg not in DOMAINS:
            raise ValueError(f"dataset spec 'synthetic:{spec.arg}': unknown domain (known: {', '.join(DOMAINS)})")
        return SyntheticSegmentation(domain=spec.arg, split=split,
                                     num_images=data.num_train if train else data.num_val,
                                     image_size=data.image_size, seed=data.seed, transform=transform)
    root = Path(spec.arg)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset spec '{spec.kind}:{spec.arg}': folder not found")
    if spec.kind in NATIVE_KINDS:
        return build_native(spec.kind, root, split, transform, data.skip_bad)
    num_classes, class_names = _voc_classes(root, data)
    return VOCSegmentationFolder(root, split=split, num_classes=num_classes, transform=transform,
                                 label_map=data.label_map or None, class_names=class_names,
                                 skip_bad=data.skip_bad)


# --------------------------------------------------------------------------------------------- the union


class MultiDataset(Dataset):
    """The union of segmentation datasets with masks in global ids and a ``"dataset"`` index per item.

    Items: the member's item (``image``, ``mask``, ``id``) with ``mask`` mapped to global ids (ignore kept) and
    ``"dataset"`` an int64 scalar tensor. Bad-sample markers of members built with ``skip_bad`` pass through.

    Sampling:

    * ``"proportional"``: plain concatenation, ``len = Σ_d n_d``; a uniformly shuffled epoch draws each dataset
      in proportion to its size (methods.md §1.2).
    * ``"balanced"``: every dataset is given ``n_max = max_d n_d`` slots, ``len = D · n_max``; slot ``j`` of
      dataset ``d`` is its image ``j mod n_d``, so smaller datasets repeat. The mapping is a fixed function of the
      index, so a ``DistributedSampler`` over it shards and reshuffles as for any map-style dataset.
    """

    def __init__(self, datasets: Sequence[Dataset], names: Sequence[str] | None = None,
                 sampling: str = "proportional"):
        if not datasets:
            raise ValueError("MultiDataset needs at least one dataset")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        names = list(names) if names is not None else [f"dataset{i}" for i in range(len(datasets))]
        if len(names) != len(datasets):
            raise ValueError(f"{len(datasets)} datasets but {len(names)} names")
        for name, ds in zip(names, datasets):
            if len(ds) == 0:
                raise ValueError(f"dataset {name!r} is empty")
        self.datasets = list(datasets)
        self.sampling = sampling
        self.label_space = LabelSpace.build(names, [self._class_names(ds) for ds in self.datasets])
        self.num_classes = self.label_space.num_classes
        self.class_names = self.label_space.global_class_names()
        self.lengths = [len(ds) for ds in self.datasets]
        self._ends = [sum(self.lengths[: d + 1]) for d in range(len(self.lengths))]  # proportional boundaries

    @staticmethod
    def _class_names(ds: Dataset) -> list[str]:
        names = getattr(ds, "class_names", None)
        if names is None:
            names = [f"class{i}" for i in range(int(ds.num_classes))]
        return list(names)

    def __len__(self) -> int:
        if self.sampling == "balanced":
            return len(self.datasets) * max(self.lengths)
        return self._ends[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``index`` -> ``(dataset, index inside it)``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        if self.sampling == "balanced":
            d, slot = divmod(index, max(self.lengths))
            return d, slot % self.lengths[d]
        d = bisect.bisect_right(self._ends, index)
        return d, index - (self._ends[d - 1] if d else 0)

    def __getitem__(self, index: int) -> dict:
        d, i = self.locate(index)
        item = self.datasets[d][i]
        if item is None or item.get("bad"):
            return item
        item = dict(item)
        item["mask"] = self.label_space.to_global(item["mask"], d)
        item["dataset"] = torch.tensor(d, dtype=torch.int64)
        return item

    @property
    def bad_samples(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ds in self.datasets:
            out.update(getattr(ds, "bad_samples", {}) or {})
        return out


def build_multi_dataset(specs: Sequence[str], data: DataSection, train: bool = True,
                        sampling: str = "proportional") -> MultiDataset:
    """A :class:`MultiDataset` over ``specs`` (see the module docstring) with the augmentation of ``data``.

    An empty ``specs`` gives the single dataset that ``data`` itself describes (``data.kind`` / ``domain`` / ``root``).
    """
    if not specs:
        ds = build_segmentation_dataset(data, train=train)
        name = f"synthetic_{data.domain}" if data.kind == "synthetic" else (Path(data.root).name or "voc")
        return MultiDataset([ds], [name], sampling=sampling)
    parsed = [parse_dataset_spec(s) for s in specs]
    datasets = []
    for spec in parsed:
        datasets.append(build_one(spec, data, train, segmentation_transform(data, train)))
    return MultiDataset(datasets, _unique_names([s.default_name for s in parsed]), sampling=sampling)
