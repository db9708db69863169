"""The embedded synthetic benchmark: determinism, label sets, styles, shapes."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from rayseg.data.synthetic import (
    CLASS_SPECS,
    CLASS_VOCABULARY,
    DOMAINS,
    SyntheticClassification,
    SyntheticSegmentation,
    shape_mask,
)


def _perimeter_ratio(mask: np.ndarray) -> float:
    """Boundary pixels / sqrt(area): scale-free, minimal for a disc."""
    p = np.pad(mask, 1)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return (mask & ~interior).sum() / np.sqrt(mask.sum())


def test_vocabulary_and_domain_label_sets():
    assert len(CLASS_VOCABULARY) == 12 and len(set(CLASS_VOCABULARY)) == 12
    assert len({c.shape for c in CLASS_SPECS}) == 12
    assert len({c.texture for c in CLASS_SPECS}) == 12
    assert {"A", "B", "C"} <= set(DOMAINS)
    a, b, c = (set(DOMAINS[k].classes) for k in "ABC")
    assert a & b and b & c and a & c  # label sets overlap pairwise ...
    assert not a <= c and not b <= c and a != b  # ... but only partly
    assert a | b | c == set(range(12))


def test_same_seed_gives_identical_samples_in_any_order():
    first = SyntheticSegmentation("B", num_images=12, image_size=32, seed=3)
    second = SyntheticSegmentation("B", num_images=12, image_size=32, seed=3)
    forward = [first[i] for i in range(12)]
    for i in reversed(range(12)):  # random access: order of generation does not matter
        s = second[i]
        assert s["image"].numpy().tobytes() == forward[i]["image"].numpy().tobytes()
        assert torch.equal(s["mask"], forward[i]["mask"])
        assert s["id"] == f"synthetic/B/train/{i:06d}"


def test_index_seed_and_split_change_the_sample():
    base = SyntheticSegmentation("A", num_images=40, image_size=32, seed=0)
    other_seed = SyntheticSegmentation("A", num_images=40, image_size=32, seed=1)
    val = SyntheticSegmentation("A", split="val", num_images=40, image_size=32, seed=0)
    x = base[0]["image"]
    for other in (base[1]["image"], other_seed[0]["image"], val[0]["image"]):
        assert (x - other).abs().mean() > 0.01
    train_images = {base.render(i)[0].tobytes() for i in range(40)}
    assert not train_images & {val.render(i)[0].tobytes() for i in range(40)}
    assert val[5]["id"] == "synthetic/A/val/000005"


def test_sample_contract_and_label_metadata():
    ds = SyntheticSegmentation("C", num_images=3, image_size=48)
    s = ds[2]
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
    assert type(s["image"]) is torch.Tensor and type(s["mask"]) is torch.Tensor
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["mask"].shape == (48, 48) and s["mask"].dtype == torch.int64
    assert ds.num_classes == 9 and len(ds) == 3
    assert ds.class_names == ["background", *(CLASS_VOCABULARY[c] for c in DOMAINS["C"].classes)]
    assert ds.vocabulary_ids() == [-1, *DOMAINS["C"].classes]
    with pytest.raises(IndexError):
        ds[3]


@pytest.mark.parametrize("domain", ["A", "B", "C"])
def test_masks_hold_only_the_domains_classes(domain):
    ds = SyntheticSegmentation(domain, num_images=40, image_size=32)
    vocab = np.array(ds.vocabulary_ids())
    seen = set()
    for i in range(len(ds)):
        mask = ds[i]["mask"].numpy()
        assert mask.min() >= 0 and mask.max() < ds.num_classes
        assert (mask > 0).any()  # at least one visible object
        seen |= set(vocab[np.unique(mask[mask > 0])].tolist())
    assert seen == set(DOMAINS[domain].classes)  # all of them appear in 40 scenes, nothing else


def test_objects_per_image_bounds_the_number_of_labels():
    one = SyntheticSegmentation("A", num_images=30, image_size=32, objects_per_image=(1, 1))
    assert all(len(np.unique(one.render(i)[1])) == 2 for i in range(30))  # background + one object
    none = SyntheticSegmentation("A", num_images=5, image_size=32, objects_per_image=(0, 0))
    assert all(not none.render(i)[1].any() for i in range(5))


def test_domains_have_distinct_background_styles():
    mean_color, roughness = {}, {}
    for domain in "ABC":
        ds = SyntheticSegmentation(domain, num_images=16, image_size=64)
        colors, rough = [], []
        for i in range(16):
            image, mask = ds.render(i)
            image, bg = image.astype(np.float32) / 255, mask == 0
            colors.append(image[:, bg].mean(axis=1))
            both = bg[:, 1:] & bg[:, :-1]  # horizontally adjacent background pixels
            rough.append(np.abs(np.diff(image, axis=2)).mean(axis=0)[both].mean())
        mean_color[domain], roughness[domain] = np.mean(colors, axis=0), np.mean(rough)
    for d1, d2 in [("A", "B"), ("A", "C"), ("B", "C")]:
        assert np.linalg.norm(mean_color[d1] - mean_color[d2]) > 0.15
    assert roughness["A"] < 0.03 < roughness["B"] < 0.06 < roughness["C"]  # noise 0.02 < 0.04 < 0.07


def test_domains_shift_object_colours():
    """The same class looks different per domain, so colour alone does not identify it."""
    ring = CLASS_VOCABULARY.index("ring")
    mean_color = {}
    for domain in "AB":
        ds = SyntheticSegmentation(domain, num_images=60, image_size=32)
        local = ds.vocabulary_ids().index(ring)
        pixels = np.concatenate([im[:, m == local] for im, m in map(ds.render, range(60))], axis=1)
        mean_color[domain] = pixels.mean(axis=1) / 255
    assert np.abs(mean_color["A"] - mean_color["B"]).max() > 0.15


def test_classification_true_mask_and_labels():
    ds = SyntheticClassification(num_images=120, image_size=64, seed=0)
    assert ds.num_classes == 12 and ds.class_names == list(CLASS_VOCABULARY)
    labels, fractions = [], []
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        mask = s["true_mask"]
        assert mask.dtype == torch.bool and mask.shape == (64, 64)
        border = torch.cat([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert not border.any()  # the dominant object lies fully inside the frame
        labels.append(s["label"])
        fractions.append(mask.float().mean().item())
    assert 0.10 <= min(fractions) and max(fractions) <= 0.40
    assert set(labels) == set(range(12))
    assert ds[7]["id"] == "synthetic/cls/train/000007"


def test_classification_class_subset_and_image_only_transform():
    seen = []
    ds = SyntheticClassification(num_images=30, image_size=32, classes=[3, 7], transform=lambda im: seen.append(im) or im)
    assert ds.class_names == ["ring", "diamond"] and ds.num_classes == 2
    assert {ds[i]["label"] for i in range(30)} == {0, 1}
    assert isinstance(seen[0], tv_tensors.Image) and seen[0].dtype == torch.uint8
    again = SyntheticClassification(num_images=30, image_size=32, classes=[3, 7])
    assert torch.equal(again[4]["true_mask"], ds[4]["true_mask"])


def _count_distractors(ds: SyntheticClassification) -> int:
    """Images with saturated pixels outside the true mask (domain A's background is a low-saturation grey)."""
    count = 0
    for i in range(len(ds)):
        image, _, true_mask = ds.render(i)
        saturation = image.max(axis=0).astype(int) - image.min(axis=0)
        count += int(((saturation > 60) & ~true_mask).sum() > 10)
    return count


def test_distractors_are_background_in_the_true_mask():
    class NoDistractor(SyntheticClassification):
        distractor_prob = 0.0

    assert _count_distractors(NoDistractor(num_images=40, image_size=64, style="A")) == 0
    assert 8 <= _count_distractors(SyntheticClassification(num_images=40, image_size=64, style="A")) <= 32


def test_worker_processes_generate_identical_samples():
    ds = SyntheticSegmentation("C", num_images=8, image_size=32, seed=5)
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert torch.equal(torch.cat([b["image"] for b in batches]), torch.stack([ds[i]["image"] for i in range(8)]))
    assert [sid for b in batches for sid in b["id"]] == [ds[i]["id"] for i in range(8)]


def test_shapes_lie_inside_their_radius():
    """Objects of radius R never leave [c - R, c + R]^2: what the renderer's bounding boxes rely on."""
    size = 101
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    outside = np.hypot(xx, yy) > 0.45 * size + 1e-3
    for k in range(12):
        for angle in (0.0, 0.4, 1.3):
            mask = shape_mask(k, size, angle)
            assert mask.sum() > 0.1 * size**2 * 0.45**2 and not (mask & outside).any(), CLASS_VOCABULARY[k]


def test_class_shapes_differ():
    masks = [shape_mask(k, 64) for k in range(12)]
    for a in range(12):
        for b in range(a + 1, 12):
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (CLASS_VOCABULARY[a], CLASS_VOCABULARY[b], iou)
    ratio = {}
    for k in range(12):
        ds = SyntheticClassification(num_images=15, image_size=64, classes=[k])
        ratio[CLASS_VOCABULARY[k]] = np.mean([_perimeter_ratio(ds.render(i)[2]) for i in range(15)])
    assert min(ratio, key=ratio.get) == "disc"  # the isoperimetric optimum, measured on real samples
    assert ratio["disc"] == pytest.approx(3.1, abs=0.3)
    assert ratio["ring"] > ratio["disc"] + 2 and ratio["star"] > ratio["disc"] + 3


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        SyntheticSegmentation("Z")
    with pytest.raises(ValueError, match="split"):
        SyntheticSegmentation("A", split="training")
    with pytest.raises(ValueError, match="classes"):
        SyntheticClassification(classes=[0, 12])
