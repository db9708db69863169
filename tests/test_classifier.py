"""Method ``classifier`` (PSSL ensemble members) and ``train_members``: data, loss, export, end to end."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rayseg.commands.train_members import format_members_table, member_config, train_members
from rayseg.config import ConfigError, load_config
from rayseg.data import collate_skip_bad
from rayseg.data.classification import build_classification_dataset
from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rayseg.labeling.members import check_members, load_members
from rayseg.methods import METHODS
from rayseg.methods.classifier import ImageClassifier


def tiny_cfg(tmp_path, **extra):
    base = {"classifier.arch": "resnet18", "classifier.image_size": 32, "classifier.num_images": 8,
            "classifier.num_val": 8, "run.storage": str(tmp_path / "runs"), "run.seed": 1,
            "train.batch_size": 4, "train.epochs": 1, "train.num_workers": 0, "train.log_every": 1}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_registered_and_not_evaluated():
    assert METHODS["classifier"] is ImageClassifier
    assert ImageClassifier.evaluates is False


def test_items_are_image_and_label_and_collate(tmp_path):
    cfg = tiny_cfg(tmp_path)
    ds = ImageClassifier.train_dataset(cfg)
    assert len(ds) == 8 and ds.num_classes == 12 and len(ds.class_names) == 12
    item = ds[0]
    assert set(item) == {"image", "label"}
    assert type(item["image"]) is torch.Tensor and item["image"].dtype == torch.float32
    assert item["image"].shape == (3, 32, 32)
    batch = collate_skip_bad([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64
    assert batch["skipped"] == []


def test_eval_preprocessing_matches_the_labeling_pipeline(tmp_path):
    """Held-out items are what ``decode_and_resize`` feeds the members: [0,1] then ImageNet-normalised."""
    cfg = tiny_cfg(tmp_path)
    ds = build_classification_dataset(cfg, train=False, split="val", num_images=2)
    raw, label, _ = ds.base.render(0)
    expected = (torch.from_numpy(raw).float() / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]) \
        / torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(ds[0]["image"], expected, atol=1e-5)
    assert ds[0]["label"] == label


def test_forward_is_finite_ce_and_sgd_reduces_it(tmp_path):
    cfg = tiny_cfg(tmp_path)
    ds = ImageClassifier.train_dataset(cfg)
    torch.manual_seed(0)
    method = ImageClassifier.from_config(cfg, ds)
    batch = collate_skip_bad([ds[i] for i in range(8)])
    with pytest.raises(NotImplementedError, match="no segmentation model"):
        method.segmentation_model()
    method.eval()
    with torch.no_grad():
        ce = method(batch)["ce"]
        logits = method.model(batch["image"])
    assert set(method(batch)) == {"ce"} and math.isfinite(ce.item())
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(logits, batch["label"]))
    method.train()
    opt = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(5):
        loss = method(batch)["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_export_loads_with_weights_only_and_in_load_members(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"classifier.arch": "mobilenet_v3_small"})
    ds = ImageClassifier.train_dataset(cfg)
    torch.manual_seed(0)
    method = ImageClassifier.from_config(cfg, ds).eval()
    norms = [m for m in method.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)  # torchvision's 0.01 is for long ImageNet runs
    out = method.export(tmp_path / "export", {"method": "classifier", "config_fingerprint": "abc"})
    assert set(out) == {"classifier"} and out["classifier"].endswith("classifier.pt")
    payload = torch.load(out["classifier"], map_location="cpu", weights_only=True)
    assert payload["arch"] == "mobilenet_v3_small" and payload["num_classes"] == 12
    assert payload["class_names"] == ds.class_names and payload["meta"]["config_fingerprint"] == "abc"
    assert set(payload["state_dict"]) == set(method.model.state_dict())  # raw torchvision keys, no "model."
    members = check_members([("mobilenet_v3_small", out["classifier"])], payload["num_classes"])
    (member,) = load_members(members, payload["num_classes"])
    x = collate_skip_bad([ds[i] for i in range(2)])["image"]
    with torch.no_grad():
        assert torch.equal(member(x), method.model(x))


def test_image_folder_and_config_errors(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "dog" / "bad.png").write_bytes(b"not a png")
    cfg = tiny_cfg(tmp_path, **{"classifier.images": str(root), "data.skip_bad": True})
    ds = ImageClassifier.train_dataset(cfg)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 5
    batch = collate_skip_bad([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == [0, 0, 1, 1]
    assert len(batch["skipped"]) == 1 and "bad.png" in batch["skipped"][0][0]
    with pytest.raises(ConfigError, match="classifier.images: folder not found"):  # checked with the config
        tiny_cfg(tmp_path, **{"method": "classifier", "classifier.images": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match=r"classifier.archs\[1\]: unknown"):
        train_members(tiny_cfg(tmp_path, **{"classifier.archs": "[resnet18, resnet_nope]"}))


def test_member_folders_depend_on_their_arch_only(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"classifier.archs": "[resnet18, mobilenet_v3_small]"})
    a, b = (member_config(cfg, arch) for arch in cfg.classifier.archs)
    assert a.method == b.method == "classifier" and a.run_dir("x") != b.run_dir("x")
    assert "resnet18" in a.run.name and "mobilenet_v3_small" in b.run.name
    more = tiny_cfg(tmp_path, **{"classifier.archs": "[resnet18, mobilenet_v3_small, shufflenet_v2_x1_0]"})
    assert member_config(more, "resnet18").run_dir("x") == a.run_dir("x")  # adding a member retrains no other
    named = tiny_cfg(tmp_path, **{"run.name": "members"})
    assert member_config(named, "resnet18").run.name == "members-resnet18"


def test_train_members_end_to_end_and_rerun_is_a_no_op(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"classifier.archs": "[resnet18, mobilenet_v3_small]", "classifier.num_images": 32,
                                "classifier.num_val": 16, "train.batch_size": 8})
    rows = train_members(cfg)
    assert [r["arch"] for r in rows] == ["resnet18", "mobilenet_v3_small"]
    assert len({r["run_dir"] for r in rows}) == 2
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["split"] == "val" and r["images"] == 16
        payload = torch.load(r["weights"], map_location="cpu", weights_only=True)
        assert payload["arch"] == r["arch"] and r["weights"].startswith(r["run_dir"])
    mtimes = [os.stat(r["weights"]).st_mtime_ns for r in rows]
    again = train_members(cfg)
    assert again == rows
    assert [os.stat(r["weights"]).st_mtime_ns for r in again] == mtimes  # nothing retrained
    table = format_members_table(rows)
    assert "resnet18" in table and "mobilenet_v3_small" in table and "held-out val" in table
