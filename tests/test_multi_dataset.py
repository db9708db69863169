"""Multi-dataset data of MDP: the concatenated label space, the union dataset and its sampling, cross-dataset mixing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from rayseg.config import ConfigError, DataSection, load_config
from rayseg.data.mixing import (
    CLASS_MIX,
    CLEAN,
    REGION_MIX,
    CrossDatasetMix,
    choose_partners,
    class_mix_mask,
    region_box,
)
from rayseg.data.multi import LabelSpace, MultiDataset, build_multi_dataset, parse_dataset_spec
from rayseg.data.synthetic import SyntheticSegmentation, write_voc_folder
from rayseg.ignore import IGNORE_INDEX


class Tiny(Dataset):
    """``n`` 2x2 items of one dataset: mask ``[[0, c], [ignore, i mod k]]``; the image encodes the index."""

    def __init__(self, n: int, k: int):
        self.n, self.num_classes = n, k
        self.class_names = [f"c{j}" for j in range(k)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((3, 2, 2), float(i)),
                "mask": torch.tensor([[0, self.num_classes - 1], [IGNORE_INDEX, i % self.num_classes]]), "id": f"{i}"}


# -------------------------------------------------------------------------------------------- label space


def test_label_space_offsets_and_global_ids():
    space = LabelSpace.build(["voc", "ade", "coco"], [["a"] * 21, ["b"] * 150, ["c"] * 171])
    assert space.offsets == (0, 21, 171)
    assert space.num_classes == 342 and space.ignore_index == -1
    assert space.global_id(0, 20) == 20 and space.global_id(1, 0) == 21 and space.global_id(2, 170) == 341
    with pytest.raises(ValueError):
        space.global_id(1, 150)
    cd = space.class_dataset()
    assert cd.shape == (342,) and cd[20] == 0 and cd[21] == 1 and cd[170] == 1 and cd[171] == 2


def test_label_space_to_global_keeps_ignore():
    space = LabelSpace.build(["a", "b"], [["x", "y", "z"], ["u", "v"]])
    mask = torch.tensor([[0, 1], [IGNORE_INDEX, 2]])
    assert space.to_global(mask, 0).tolist() == [[0, 1], [IGNORE_INDEX, 2]]
    assert space.to_global(torch.tensor([[0, 1], [IGNORE_INDEX, 1]]), 1).tolist() == [[3, 4], [IGNORE_INDEX, 4]]
    assert space.global_class_names() == ["a/x", "a/y", "a/z", "b/u", "b/v"]


def test_label_space_plain_round_trip():
    space = LabelSpace.build(["a", "b"], [["x", "y", "z"], ["u", "v"]])
    d = json.loads(json.dumps(space.to_dict()))
    assert d["datasets"][1] == {"name": "b", "offset": 3, "class_names": ["u", "v"]}
    assert d["num_classes"] == 5
    assert LabelSpace.from_dict(d) == space
    d["datasets"][1]["offset"] = 4
    with pytest.raises(ValueError, match="offsets"):
        LabelSpace.from_dict(d)


def test_label_space_rejects_duplicate_names():
    with pytest.raises(ValueError, match="unique"):
        LabelSpace.build(["a", "a"], [["x"], ["y"]])


def test_ignore_never_collides_with_a_global_id():
    """-1 for every size: with 260 classes global id 255 is b's class 55, not ignore; and up to 65,535 classes."""
    for sizes in ((200, 55), (200, 60), (1000, 64535)):
        space = LabelSpace.build(["a", "b"], [["x"] * sizes[0], ["y"] * sizes[1]])
        assert space.ignore_index == IGNORE_INDEX == -1 and space.to_dict()["ignore_index"] == -1
    large = LabelSpace.build(["a", "b"], [["x"] * 200, ["y"] * 60])
    mask = torch.tensor([[55, IGNORE_INDEX], [0, 59]])
    assert large.to_global(mask, 1).tolist() == [[255, -1], [200, 259]]


# --------------------------------------------------------------------------------------------- the union


def test_proportional_union_maps_masks_to_global_ids():
    multi = MultiDataset([Tiny(3, 4), Tiny(5, 2)], ["p", "q"])
    assert len(multi) == 8 and multi.num_classes == 6
    assert [multi.locate(i) for i in range(8)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4)]
    item = multi[4]                                   # dataset q, its item 1: local mask [[0, 1], [IGNORE_INDEX, 1]]
    assert item["mask"].tolist() == [[4, 5], [IGNORE_INDEX, 5]]
    assert item["dataset"].dtype == torch.int64 and int(item["dataset"]) == 1
    assert float(item["image"][0, 0, 0]) == 1.0
    assert multi[2]["mask"].tolist() == [[0, 3], [IGNORE_INDEX, 2]]


def test_balanced_sampling_repeats_smaller_datasets():
    multi = MultiDataset([Tiny(3, 4), Tiny(7, 2)], ["p", "q"], sampling="balanced")
    assert len(multi) == 2 * 7
    small = [multi.locate(i) for i in range(7)]
    assert small == [(0, 0), (0, 1), (0, 2), (0, 0), (0, 1), (0, 2), (0, 0)]
    assert [multi.locate(i) for i in range(7, 14)] == [(1, j) for j in range(7)]
    # each dataset gets exactly half of an epoch
    counts = torch.bincount(torch.tensor([multi.locate(i)[0] for i in range(len(multi))]))
    assert counts.tolist() == [7, 7]


def test_balanced_sampling_with_a_distributed_sampler_covers_every_slot_once():
    multi = MultiDataset([Tiny(3, 4), Tiny(5, 2)], ["p", "q"], sampling="balanced")
    shards = [list(DistributedSampler(multi, num_replicas=2, rank=r, shuffle=True, seed=3)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    assert not set(shards[0]) & set(shards[1])


def test_build_multi_dataset_from_synthetic_specs():
    data = DataSection(num_train=4, image_size=32, crop_size=32)
    multi = build_multi_dataset(["synthetic:A", "synthetic:B", "synthetic:C"], data)
    assert multi.label_space.datasets == ("synthetic_A", "synthetic_B", "synthetic_C")
    assert multi.label_space.sizes == (7, 7, 9) and multi.num_classes == 23 and len(multi) == 12
    for i in range(len(multi)):
        item = multi[i]
        d = int(item["dataset"])
        valid = item["mask"][item["mask"] != IGNORE_INDEX]
        lo = multi.label_space.offsets[d]
        assert valid.numel() and lo <= int(valid.min()) and int(valid.max()) < lo + multi.label_space.sizes[d]
        assert item["image"].shape == (3, 32, 32)


def test_empty_spec_list_is_the_data_section_dataset():
    multi = build_multi_dataset([], DataSection(domain="B", num_train=3, image_size=32, crop_size=32))
    assert multi.label_space.datasets == ("synthetic_B",) and multi.num_classes == 7 and len(multi) == 3


def test_voc_spec_reads_class_names_file(tmp_path):
    root = tmp_path / "vocb"
    write_voc_folder(SyntheticSegmentation("B", num_images=3, image_size=32), root)
    (root / "class_names.txt").write_text("background\nring\ncross\nellipse\nstar\ndiamond\nbar\n")
    data = DataSection(num_train=2, image_size=32, crop_size=32)
    multi = build_multi_dataset(["synthetic:A", f"voc:{root}"], data)
    assert multi.label_space.datasets == ("synthetic_A", "vocb")
    assert multi.label_space.offsets == (0, 7) and multi.num_classes == 14
    reference = SyntheticSegmentation("B", num_images=3, image_size=32)[1]["mask"]
    # same image, same labels + 7 (the crop of 32 at scale 0.5..2 moves pixels: compare the label sets)
    got = set(multi[3]["mask"].unique().tolist()) - {IGNORE_INDEX}
    assert got <= {v + 7 for v in reference.unique().tolist()}


def test_voc_spec_without_class_count_is_an_error(tmp_path):
    root = tmp_path / "v"
    write_voc_folder(SyntheticSegmentation("A", num_images=2, image_size=32), root)
    with pytest.raises(ValueError, match="num_classes"):
        build_multi_dataset([f"voc:{root}"], DataSection())
    multi = build_multi_dataset([f"voc:{root}"], DataSection(num_classes=7))
    assert multi.num_classes == 7


def test_duplicate_specs_get_unique_names():
    multi = build_multi_dataset(["synthetic:A", "synthetic:A"], DataSection(num_train=2, image_size=32,
                                                                             crop_size=32))
    assert multi.label_space.datasets == ("synthetic_A", "synthetic_A_2") and multi.num_classes == 14


@pytest.mark.parametrize("text", ["A", "synthetic:", "coco:/x", ""])
def test_bad_specs(text):
    with pytest.raises(ValueError, match="expected 'synthetic:DOMAIN' or 'KIND:ROOT'"):
        parse_dataset_spec(text)


def test_config_rejects_a_bad_spec_in_one_line():
    with pytest.raises(ConfigError, match=r"^mdp.datasets\[1\]: expected"):
        load_config(None, ["mdp.datasets=[synthetic:A, imagenet]"])


# ----------------------------------------------------------------------------------------------- mixing


def test_region_box_geometry():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(2, generator=torch.Generator().manual_seed(0)).tolist()
    y0, x0, y1, x1 = region_box(40, 32, 0.75, g)           # √(1−λ) = 0.5: a 20 x 16 box before clipping
    assert (x0, y0) == (int(r[0] * 32), int(r[1] * 40))
    assert x1 == min(32, x0 + 16) and y1 == min(40, y0 + 20)


def test_region_box_area_is_at_most_nominal_and_exact_when_not_clipped():
    g = torch.Generator().manual_seed(1)
    h = w = 30
    unclipped = 0
    for _ in range(300):
        lam = float(torch.rand((), generator=g))
        y0, x0, y1, x1 = region_box(h, w, lam, g)
        side_h, side_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        assert 0 <= x0 < w and 0 <= y0 < h and x1 <= w and y1 <= h
        assert (y1 - y0) * (x1 - x0) <= side_h * side_w
        if x0 + side_w <= w and y0 + side_h <= h:
            unclipped += 1
            assert (y1 - y0, x1 - x0) == (side_h, side_w)
    assert unclipped > 20
    y0, x0, y1, x1 = region_box(h, w, 1.0, g)               # λ = 1: empty box
    assert (y1 - y0) * (x1 - x0) == 0


def test_class_mix_mask_takes_half_of_the_present_classes_rounded_up():
    label = torch.tensor([[1, 1, 2, IGNORE_INDEX], [3, 3, 2, IGNORE_INDEX]])
    for seed in range(10):
        m = class_mix_mask(label, torch.Generator().manual_seed(seed))
        chosen = set(label[m].tolist())
        assert len(chosen) == 2 and chosen <= {1, 2, 3}
        assert torch.equal(m, torch.isin(label, torch.tensor(sorted(chosen))))     # whole classes only
    assert not class_mix_mask(torch.full((2, 2), IGNORE_INDEX), torch.Generator()).any()


def test_partners_come_from_another_dataset():
    ids = torch.tensor([0, 0, 1, 2, 1, 0])
    for seed in range(5):
        p = choose_partners(ids, torch.Generator().manual_seed(seed))
        assert all(ids[p[i]] != ids[i] for i in range(6))
    single = torch.zeros(4, dtype=torch.int64)
    p = choose_partners(single, torch.Generator().manual_seed(0))
    assert all(0 <= int(p[i]) < 4 and int(p[i]) != i for i in range(4))
    assert (choose_partners(single, torch.Generator(), same_dataset_fallback=False) == -1).all()


def _unique_batch(b: int = 6, h: int = 12, w: int = 10):
    """Images whose channel 0 names (image, position) of each pixel; masks of per-dataset label ranges."""
    pos = torch.arange(h * w, dtype=torch.float32).view(h, w)
    images = torch.stack([torch.stack([1000.0 * i + pos, pos, pos]) for i in range(b)])
    datasets = torch.tensor([0, 1, 0, 1, 2, 2])[:b]
    g = torch.Generator().manual_seed(5)
    masks = torch.stack([10 * int(datasets[i]) + torch.randint(0, 3, (h, w), generator=g) for i in range(b)])
    masks[0, :2] = IGNORE_INDEX
    return images, masks, datasets


def test_mixed_images_and_labels_come_from_the_same_source_pixel():
    images, masks, datasets = _unique_batch()
    mix = CrossDatasetMix(1 / 3, 1 / 3)
    out = mix(images, masks, datasets, torch.Generator().manual_seed(11))
    b, _, h, w = images.shape
    pos = torch.arange(h * w).view(h, w)
    assert sorted(out.kind.tolist()) == [CLEAN, CLEAN, REGION_MIX, REGION_MIX, CLASS_MIX, CLASS_MIX]
    for i in range(b):
        source = (out.images[i, 0] // 1000).long()                 # which image each pixel's colour came from
        assert torch.equal(out.images[i, 0] % 1000, pos.float())    # and from the same position
        expected = torch.where(out.from_partner[i], out.partner[i].clamp_min(0), i)
        assert torch.equal(source, expected)
        assert torch.equal(out.masks[i], masks[source, torch.arange(h)[:, None], torch.arange(w)])
        if out.kind[i] == CLEAN:
            assert out.partner[i] == -1 and torch.equal(out.images[i], images[i])
        else:
            assert datasets[out.partner[i]] != datasets[i]


def test_region_mix_pastes_a_box_and_class_mix_pastes_whole_classes():
    images, masks, datasets = _unique_batch()
    out = CrossDatasetMix(1 / 3, 1 / 3)(images, masks, datasets, torch.Generator().manual_seed(3))
    for i in range(len(images)):
        m = out.from_partner[i]
        if out.kind[i] == REGION_MIX and m.any():
            rows, cols = m.any(1).nonzero().view(-1), m.any(0).nonzero().view(-1)
            box = torch.zeros_like(m)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert torch.equal(m, box)
        if out.kind[i] == CLASS_MIX:
            kept = set(masks[i][~m].tolist())
            assert not kept & set(masks[i][m].tolist())            # a class is kept entirely or not at all
            present = set(masks[i].unique().tolist()) - {IGNORE_INDEX}
            assert len(kept) == math.ceil(len(present) / 2) and IGNORE_INDEX not in kept


def test_mixing_is_deterministic_for_a_generator_seed():
    images, masks, datasets = _unique_batch()
    mix = CrossDatasetMix(0.5, 0.5, lambda_range=(0.2, 0.8))
    a = mix(images, masks, datasets, torch.Generator().manual_seed(7))
    b = mix(images, masks, datasets, torch.Generator().manual_seed(7))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.kind, b.kind)
    assert (a.kind != CLEAN).all()


def test_mixing_fraction_checks():
    with pytest.raises(ValueError):
        CrossDatasetMix(0.7, 0.5)
    with pytest.raises(ValueError):
        CrossDatasetMix(lambda_range=(0.5, 0.2))
