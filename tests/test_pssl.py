"""PSSL pre-training: the background-weighted CE, the pseudo-label dataset over shards, the method, the export."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from rayseg.config import ConfigError, load_config
from rayseg.data.errors import BadSampleError
from rayseg.data.pseudo_labels import PSSLDataset
from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.data.transforms import SegTrainTransform
from rayseg.ignore import IGNORE_INDEX
from rayseg.methods import METHODS
from rayseg.methods.pssl import PSSL, BackgroundWeightedCrossEntropy
from rayseg.models import build_model, export_weights, load_weights
from tests.native_trees import gradient_deciles, write_labels

K = 3
SIZE = 32


# ------------------------------------------------------------------------------------------- weighted CE


def test_weighted_ce_hand_computed_two_pixels():
    # K = 2 object classes, background = index 2 with weight 0.1; one pixel of class 0, one background pixel
    logits = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]).view(1, 3, 1, 2)
    target = torch.tensor([[[0, 2]]])
    log_p_a = 1.0 - math.log(math.exp(1) + math.exp(2) + math.exp(0))   # log p_0 at pixel a
    log_p_b = 3.0 - math.log(math.exp(0) + math.exp(0) + math.exp(3))   # log p_2 at pixel b
    expected = (1.0 * -log_p_a + 0.1 * -log_p_b) / (1.0 + 0.1)
    loss = BackgroundWeightedCrossEntropy(num_classes=2, bg_weight=0.1)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_hand_computed_2x2_with_ignore():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]],
                           [[0.0, 1.0], [0.0, 0.0]],
                           [[1.0, 0.0], [-2.0, 7.0]]]).unsqueeze(0)           # 1 x 3 x 2 x 2
    target = torch.tensor([[[2, 1], [0, IGNORE_INDEX]]])
    def neg_log_p(values, c):
        return -(values[c] - math.log(sum(math.exp(v) for v in values)))
    terms = [(0.25, neg_log_p([0.5, 0.0, 1.0], 2)),   # background pixel, weight w_bg
             (1.0, neg_log_p([-1.0, 1.0, 0.0], 1)),
             (1.0, neg_log_p([2.0, 0.0, -2.0], 0))]    # the fourth pixel is ignored
    expected = sum(w * l for w, l in terms) / sum(w for w, _ in terms)
    loss = BackgroundWeightedCrossEntropy(num_classes=2, bg_weight=0.25)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bg_weight", [0.1, 0.001, 1.0, 3.0])
def test_weighted_ce_equals_torch_cross_entropy(bg_weight):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 9, 7, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 6, (4, 9, 7), generator=g)
    target[torch.rand(4, 9, 7, generator=g) < 0.3] = IGNORE_INDEX
    target[0] = 5  # a background-only image too
    loss_fn = BackgroundWeightedCrossEntropy(num_classes=5, bg_weight=bg_weight)
    assert loss_fn.weight.tolist() == pytest.approx([1, 1, 1, 1, 1, bg_weight])
    w = torch.tensor([1.0] * 5 + [bg_weight], dtype=torch.float64)
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=IGNORE_INDEX)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = loss_fn(a, target)
    F.cross_entropy(b, target, weight=w, ignore_index=IGNORE_INDEX).backward()
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
    if bg_weight == 1.0:  # no reweighting: the plain mean CE over non-ignored pixels
        assert got.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX).item(), rel=1e-5)


def test_weighted_ce_all_ignored_is_zero_with_gradient():
    logits = torch.randn(2, 4, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), IGNORE_INDEX)
    loss = BackgroundWeightedCrossEntropy(num_classes=3, bg_weight=0.1)(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # background-only with weight 0: also 0, not NaN
    zero = BackgroundWeightedCrossEntropy(num_classes=3, bg_weight=0.0)(logits, torch.full((2, 5, 5), 3))
    assert zero.item() == 0.0


def test_weighted_ce_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="K\\+1 = 4"):
        BackgroundWeightedCrossEntropy(num_classes=3, bg_weight=0.1)(torch.zeros(1, 3, 2, 2),
                                                                     torch.zeros(1, 2, 2, dtype=torch.long))


# ---------------------------------------------------------------------------------------------- dataset


def expected_mask(deciles: np.ndarray, cls: int, threshold: int = 9, ignore_d8: bool = False) -> np.ndarray:
    mask = np.full(deciles.shape, K, np.int64)
    mask[deciles >= threshold] = cls
    if ignore_d8:
        mask[deciles == threshold - 1] = IGNORE_INDEX
    return mask


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("pssl")
    images = root / "images"
    write_image_folder(SyntheticClassification(num_images=6, image_size=SIZE, classes=[0, 1, 2]), images)
    items = write_labels(root / "labels" / "v-test", images)
    return root / "labels" / "v-test", images, items


def test_dataset_masks_top_decile_is_the_class_rest_background(labelled):
    labels, images, items = labelled
    ds = PSSLDataset(labels, images, num_classes=K)
    assert len(ds) == 6 and ds.num_classes == K + 1
    assert ds.class_names == ["disc", "square", "triangle", "background"]
    assert sorted(ds.ids) == sorted(image_id for image_id, _ in items)
    deciles = gradient_deciles(SIZE, SIZE)
    for i in range(len(ds)):
        item = ds[i]
        cls = dict(items)[item["id"]]
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["mask"].dtype == torch.int64
        np.testing.assert_array_equal(item["mask"].numpy(), expected_mask(deciles, cls))
        assert int((item["mask"] == cls).sum()) == 3 * SIZE  # columns 29..31 are decile 9


@pytest.mark.parametrize("threshold,ignore_d8", [(8, False), (9, True), (8, True)])
def test_dataset_threshold_and_ignore_d8(labelled, threshold, ignore_d8):
    labels, images, items = labelled
    ds = PSSLDataset(labels, images, num_classes=K, threshold=threshold, ignore_d8=ignore_d8)
    item = ds[0]
    cls = dict(items)[item["id"]]
    np.testing.assert_array_equal(item["mask"].numpy(),
                                  expected_mask(gradient_deciles(SIZE, SIZE), cls, threshold, ignore_d8))


def test_dataset_crop_padding_is_ignore(labelled):
    labels, images, items = labelled
    transform = SegTrainTransform(crop_size=48, scale_range=(1.0, 1.0), hflip_prob=0.0, color_jitter=0.0)
    ds = PSSLDataset(labels, images, num_classes=K, transform=transform)
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"]
        assert item["image"].shape == (3, 48, 48) and mask.shape == (48, 48)
        assert int((mask == IGNORE_INDEX).sum()) == 48 * 48 - SIZE * SIZE
        rows, cols = torch.nonzero(mask != IGNORE_INDEX, as_tuple=True)
        inner = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        np.testing.assert_array_equal(inner.numpy(), expected_mask(gradient_deciles(SIZE, SIZE),
                                                                   dict(items)[item["id"]]))


def test_dataset_nearest_resizes_a_smaller_decile_map(tmp_path, labelled):
    _, images, _ = labelled
    items = write_labels(tmp_path / "v-small", images, decile_size=(SIZE // 2, SIZE // 2))
    ds = PSSLDataset(tmp_path / "v-small", images, num_classes=K)
    small = gradient_deciles(SIZE // 2, SIZE // 2)
    upsampled = small.repeat(2, axis=0).repeat(2, axis=1)  # nearest x2: every label pixel becomes a 2x2 block
    item = ds[1]
    assert item["mask"].shape == (SIZE, SIZE)
    np.testing.assert_array_equal(item["mask"].numpy(), expected_mask(upsampled, dict(items)[item["id"]]))


def test_dataset_pickles_without_arrow(labelled):
    labels, images, _ = labelled
    ds = PSSLDataset(labels, images, num_classes=K)
    assert not any(isinstance(v, (pa.Table, pa.ChunkedArray)) for v in vars(ds).values())
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[2]["mask"], ds[2]["mask"]) and clone[2]["id"] == ds[2]["id"]


def test_dataset_errors(tmp_path, labelled):
    labels, images, _ = labelled
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no committed label shards in .*empty.*rayseg label"):
        PSSLDataset(tmp_path / "empty", images, num_classes=K)
    with pytest.raises(ValueError, match="outside 0..1"):
        PSSLDataset(labels, images, num_classes=2)
    ds = PSSLDataset(labels, tmp_path / "no-images", num_classes=K)
    assert ds.class_names == ["class0", "class1", "class2", "background"]
    with pytest.raises(BadSampleError, match=f"no-images/{ds.ids[0]}: file not found"):
        ds[0]
    skipping = PSSLDataset(labels, tmp_path / "no-images", num_classes=K, skip_bad=True)
    marker = skipping[1]
    assert marker["bad"] and marker["id"] == ds.ids[1] and "file not found" in marker["reason"]
    assert list(skipping.bad_samples) == [ds.ids[1]]


def test_dataset_corrupt_decile_png_names_the_sample(labelled):
    labels, images, _ = labelled
    ds = PSSLDataset(labels, images, num_classes=K)
    ds.deciles_png[2] = b"not a png"
    with pytest.raises(BadSampleError, match=f"{ds.ids[2]}: cannot decode the decile map"):
        ds[2]


# ----------------------------------------------------------------------------------------------- method


def pssl_config(labels, images, *extra):
    return load_config(None, ["method=pssl", f"pssl.labels={labels}", f"pssl.images={images}",
                              f"pssl.num_classes={K}", "model.channels=16", "model.output_stride=16",
                              "model.dropout=0", "data.crop_size=32", *extra])


def test_pssl_is_registered():
    assert METHODS["pssl"] is PSSL and METHODS["pssl"] is PSSL
    assert PSSL.evaluates is False and PSSL.export_part == "model"


def test_pssl_train_dataset_from_config(labelled):
    labels, images, _ = labelled
    cfg = pssl_config(labels, images, "pssl.threshold_decile=8", "pssl.ignore_d8=true")
    ds = PSSL.train_dataset(cfg)
    assert isinstance(ds, PSSLDataset) and ds.threshold == 8 and ds.ignore_d8
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, K, IGNORE_INDEX}


def test_pssl_forward_and_training_reduce_the_loss(labelled):
    labels, images, _ = labelled
    cfg = pssl_config(labels, images, "pssl.bg_weight=0.1")
    train_set = PSSL.train_dataset(cfg)
    torch.manual_seed(0)
    method = PSSL.from_config(cfg, train_set)
    assert method.loss.weight.tolist() == pytest.approx([1, 1, 1, 0.1])
    assert method.segmentation_model().classifier.out_channels == K + 1
    batch = default_collate([train_set[i] for i in range(2)])
    losses = method(batch)
    assert set(losses) == {"wce"}
    first = losses["wce"]
    assert first.ndim == 0 and torch.isfinite(first) and first.requires_grad
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        method(batch)["wce"].backward()
        opt.step()
    with torch.no_grad():
        last = method(batch)["wce"]
    assert last.item() < 0.7 * first.item()
    assert method.export_meta() == {"class_names": ["disc", "square", "triangle", "background"], "pssl_classes": K}


def test_pssl_export_fine_tunes_into_another_class_count(tmp_path, labelled):
    labels, images, _ = labelled
    cfg = pssl_config(labels, images)
    torch.manual_seed(0)
    method = PSSL.from_config(cfg, PSSL.train_dataset(cfg))
    source = method.segmentation_model()
    path = export_weights(source, tmp_path / "model.pt", part=PSSL.export_part, meta=method.export_meta())

    target = build_model(backbone="resnet18", head="fcn", num_classes=5, output_stride=16, channels=16, dropout=0)
    classifier_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("classifier.")}
    report = load_weights(target, path)
    assert report.meta["pssl_classes"] == K
    assert any(d.startswith("classifier.weight") for d in report.dropped)
    assert any("classifier starts from scratch" in n for n in report.notices)
    src, dst = source.state_dict(), target.state_dict()
    for key in dst:
        if key.startswith(("backbone.", "decoder.")):
            assert torch.equal(dst[key], src[key]), key
    for key, value in classifier_before.items():
        assert torch.equal(dst[key], value)  # stays as constructed (5 classes)
    assert dst["classifier.weight"].shape[0] == 5


@pytest.mark.parametrize("overrides,key", [
    ([], "pssl.labels"),
    (["pssl.labels={missing}"], "pssl.labels: folder not found"),
    (["pssl.labels={labels}"], "pssl.images"),
    (["pssl.labels={labels}", "pssl.images={missing}"], "pssl.images: folder not found"),
    (["pssl.labels={labels}", "pssl.images={images}"], "pssl.num_classes"),
    (["pssl.labels={labels}", "pssl.images={images}", "pssl.num_classes=3", "pssl.bg_weight=-1"], "pssl.bg_weight"),
    (["pssl.labels={labels}", "pssl.images={images}", "pssl.num_classes=3", "pssl.threshold_decile=0"],
     "pssl.threshold_decile"),
])
def test_pssl_config_errors_are_one_line(tmp_path, labelled, overrides, key):
    labels, images, _ = labelled
    values = {"labels": labels, "images": images, "missing": tmp_path / "nowhere"}
    with pytest.raises(ConfigError, match=f"^{key}: ") as err:  # when the config is read, before any Ray work
        load_config(None, ["method=pssl", *(o.format(**values) for o in overrides)])
    assert "\n" not in str(err.value)
