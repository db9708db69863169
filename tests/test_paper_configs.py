"""Each paper configuration in ``jobs/configs/paper/`` run for real at reduced length: one training step of batch 2 on
each of 2 Ray Train workers, everything else as shipped (image and crop sizes, K, ResNet-50, queue sizes, schedules),
on small trees in the datasets' own layouts with images of different sizes, and one evaluation for the fine-tunes.

Only what cannot run here is overridden: the data and weight paths, GPUs (CPU workers over gloo; SyncBatchNorm needs
CUDA), the worker count, batch and length, and the labelling job's actors, shard size (2 shards, one per actor) and
memory cap ``batch_cap``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

from rayseg.commands.label import label_images
from rayseg.config import load_config
from rayseg.engine.runner import train
from rayseg.ignore import IGNORE_INDEX
from rayseg.methods import METHODS
from rayseg.models.weights import read_weights
from tests.native_trees import write_ade20k, write_cityscapes, write_coco_stuff, write_imagenet, write_voc_aug

PAPER = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "paper"
SHORT_RUN = ["train.num_workers=2", "train.use_gpu=false", "train.cpus_per_worker=1", "train.batch_size=2",
             "train.epochs=1", "train.max_steps_per_epoch=1", "data.loader_workers=0"]
TRAIN_SIZES = [(375, 500), (500, 333), (427, 640), (480, 360), (512, 512), (333, 500), (400, 600), (360, 480)]


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Every dataset the paper configs read, in its own layout (8 training images each, of 8 sizes)."""
    root = tmp_path_factory.mktemp("paper-data")
    return {
        "voc": write_voc_aug(root, [0, 15, 255, 20, 7], sizes=[(375, 500), (500, 375)], stripe=24,
                             train_sizes=TRAIN_SIZES[:4]),
        "ade20k": write_ade20k(root, [0, 1, 150, 7, 88], sizes=[(512, 683), (640, 480)], stripe=32,
                               train_sizes=TRAIN_SIZES),
        "cityscapes": write_cityscapes(root, [7, 26, 0, 33, 11, 24], sizes=[(770, 1030), (512, 1024)], stripe=48,
                                       train_sizes=[(512, 1024), (540, 960)] * 4),
        "coco_stuff": write_coco_stuff(root, [0, 12, 91, 181, 255], sizes=[(480, 640)], stripe=32,
                                       train_sizes=TRAIN_SIZES),
        "imagenet": write_imagenet(root, {0: 1, 254: 2, 255: 2, 256: 2, 999: 1}, sizes=TRAIN_SIZES),
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """torchvision ImageNet classifiers (random weights) saved as users save the published ones."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch in ("resnet50", "resnet18", "mobilenet_v3_large"):
        torch.manual_seed(0)
        paths[arch] = folder / f"{arch}.pt"
        torch.save(torchvision.models.get_model(arch, num_classes=1000).state_dict(), paths[arch])
    return paths


def paper_config(name: str, tmp_path: Path, *overrides: str, short_run: bool = True):
    cfg = load_config(PAPER / name, [f"run.storage={tmp_path / 'runs'}", f"run.name={Path(name).stem}",
                                     *(SHORT_RUN if short_run else ()), *overrides])
    return cfg


def run_one_step(cfg, command: str) -> tuple[dict, Path]:
    summary = train(cfg, command, METHODS[cfg.method])
    run_dir = Path(cfg.run.storage) / cfg.run.name
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["steps"] == summary["steps"] == 1  # one step of 2 images on each of 2 workers
    assert all(np.isfinite(v) for v in written["final_losses"].values())
    return written, run_dir


def valid_pixels(cfg) -> tuple[int, int]:
    """(pixels with a class, number of images) of the validation split, read as the evaluation reads it."""
    from rayseg.data import read_segmentation_split

    dataset = read_segmentation_split(cfg.data, train=False, transform=None)
    masks = [dataset[i]["mask"] for i in range(len(dataset))]
    return sum(int((m != IGNORE_INDEX).sum()) for m in masks), len(masks)


def check_evaluation(cfg, run_dir: Path, num_classes: int) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pixels, images = valid_pixels(cfg)
    assert images >= 2 and metrics["num_pixels"] == pixels  # every labelled pixel of each whole image, once
    assert len(metrics["per_class_iou"]) == num_classes
    assert np.asarray(metrics["confusion_matrix"]).shape == (num_classes, num_classes)
    assert (run_dir / "confusion_matrix.png").is_file()
    return metrics


# ------------------------------------------------------------------------------------------ PSSL, end to end


def test_pssl_paper_pipeline_label_pretrain_finetune_voc(ray_cluster, trees, weights, tmp_path):
    """ImageNet-1k (K = 1000, images in classes 0, 254, 255, 256, 999) -> pseudo labels at the paper's geometry
    with 2 of the 15 members -> DeepLabV3-R50 over 1001 classes from the ResNet-50 classifier -> VOC fine-tune."""
    members = [f"resnet18:{weights['resnet18']}", f"mobilenet_v3_large:{weights['mobilenet_v3_large']}"]
    label_cfg = paper_config(
        "pssl_label_imagenet.yaml", tmp_path, f"label.images={trees['imagenet']}",
        f"label.output={tmp_path / 'labels'}", f"label.members=[{', '.join(members)}]", "label.num_actors=2",
        "label.gpus_per_actor=0", "label.cpus_per_actor=1", "label.explainer.batch_cap=50", "label.shard_size=4",
        short_run=False)
    assert (label_cfg.label.input_size, label_cfg.label.explainer.samples, label_cfg.label.num_classes) == (298, 50,
                                                                                                          1000)
    label_cfg.label.explainer.samples = 8  # as shipped but 8 noisy copies: the path is the same, the cost 6x lower
    labelled = label_images(label_cfg.label)
    assert (labelled["labelled"], labelled["errors"], labelled["total_rows"]) == (8, 0, 8)
    version_dir = Path(labelled["version_dir"])
    classes = {c for shard in version_dir.glob("shard-*.parquet")
               for c in pq.read_table(shard, columns=["class_index"]).column("class_index").to_pylist()}
    assert sorted(classes) == [0, 254, 255, 256, 999]

    pretrain = paper_config("pssl_pretrain_imagenet.yaml", tmp_path, f"pssl.labels={version_dir}",
                            f"pssl.images={trees['imagenet']}", f"model.init_weights={weights['resnet50']}")
    assert (pretrain.data.crop_size, pretrain.model.backbone, pretrain.pssl.num_classes) == (256, "resnet50", 1000)
    _, pssl_run = run_one_step(pretrain, "pretrain")
    exported = read_weights(pssl_run / "export" / "model.pt")
    assert exported["state_dict"]["classifier.weight"].shape[0] == 1001  # 1000 classes + background

    finetune = paper_config("finetune_voc.yaml", tmp_path, f"data.root={trees['voc']}",
                            f"model.init_weights={pssl_run / 'export' / 'model.pt'}")
    assert finetune.data.train_split == "train_aug" and finetune.data.crop_size == 480
    _, run_dir = run_one_step(finetune, "finetune")
    check_evaluation(finetune, run_dir, 21)


# ------------------------------------------------------------------------------------------ the other pre-trainings


def test_mdp_on_the_four_dataset_union(ray_cluster, trees, tmp_path):
    specs = [f"voc:{trees['voc']}", f"coco_stuff:{trees['coco_stuff']}", f"ade20k:{trees['ade20k']}",
             f"cityscapes:{trees['cityscapes']}"]
    cfg = paper_config("mdp_four_datasets.yaml", tmp_path, f"mdp.datasets=[{', '.join(specs)}]")
    assert cfg.data.crop_size == 512 and cfg.model.output_stride == 8
    _, run_dir = run_one_step(cfg, "pretrain")
    state = torch.load(run_dir / "export" / "backbone.pt", map_location="cpu", weights_only=True)
    assert state["state_dict"]["backbone.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    checkpoint = max(run_dir.glob("checkpoint_*/state.pt"))
    prototypes = next(t for k, t in torch.load(checkpoint, map_location="cpu", weights_only=True)["method"].items()
                      if k.endswith("prototypes"))
    assert prototypes.shape == (21 + 171 + 150 + 19, 128)


@pytest.mark.parametrize("name", ["pixcon_sr_coco.yaml", "densecl_coco.yaml"])
def test_pixel_contrast_on_coco_images(ray_cluster, trees, tmp_path, name):
    coco = trees["coco_stuff"] / "images" / "train2017"  # the plain COCO train2017 image folder
    cfg = paper_config(name, tmp_path, f"data.root={coco}", "train.sync_bn=false")
    section = cfg.pixcon if cfg.method == "pixcon" else cfg.densecl
    assert (cfg.views.crop_size, section.queue_size, section.proj_hidden_dim) == (224, 65536, 2048)
    _, run_dir = run_one_step(cfg, "pretrain")
    assert (run_dir / "export" / "backbone.pt").is_file()


# ------------------------------------------------------------------------------------------ fine-tunes


@pytest.mark.parametrize("name, kind, num_classes", [
    ("finetune_ade20k.yaml", "ade20k", 150),
    ("finetune_ade20k_ssa.yaml", "ade20k", 150),
    ("finetune_cityscapes.yaml", "cityscapes", 19),
])
def test_finetune_and_evaluate(ray_cluster, trees, weights, tmp_path, name, kind, num_classes):
    cfg = paper_config(name, tmp_path, f"data.root={trees[kind]}", f"model.init_weights={weights['resnet50']}")
    _, run_dir = run_one_step(cfg, "finetune")
    metrics = check_evaluation(cfg, run_dir, num_classes)
    if cfg.eval.mode == "slide":  # Cityscapes: 769 windows, stride 513, over 770 x 1030 and 512 x 1024 frames
        assert (cfg.eval.crop, cfg.eval.stride) == (769, 513)
    assert 0.0 <= metrics["miou"] <= 1.0
