"""``rayseg demo``: every step of rayseg on the embedded synthetic benchmark, on a local Ray cluster.

The question the demo answers is the one the papers ask: is a network pre-trained on a source (here synthetic
domain A) a better start for a small labelled target set (domain C, whose classes only partly overlap A's) than
random initialisation, at the same fine-tuning budget? Each row of the final table is one fine-tune run of the
same model, data and schedule, differing only in the weights it starts from.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rayseg.config import Config, config_from_dict
from rayseg.engine.runner import ensure_ray, train


@dataclass(frozen=True)
class DemoBudget:
    source_images: int
    target_images: int
    val_images: int
    pretrain_epochs: int
    finetune_epochs: int
    classification_images: int  # PSSL: the classification set the ensemble is trained on and then labels
    classifier_epochs: int
    smoothgrad_samples: int


FULL = DemoBudget(source_images=1024, target_images=96, val_images=128, pretrain_epochs=6, finetune_epochs=10,
                  classification_images=256, classifier_epochs=4, smoothgrad_samples=8)
QUICK = DemoBudget(source_images=128, target_images=32, val_images=32, pretrain_epochs=1, finetune_epochs=2,
                   classification_images=64, classifier_epochs=1, smoothgrad_samples=2)
ENSEMBLE = ["resnet18", "shufflenet_v2_x1_0", "regnet_y_400mf"]

# One small network for every run: resnet18 + FCN head at output stride 16 on 64x64 images.
MODEL = {"backbone": "resnet18", "head": "fcn", "output_stride": 16, "channels": 64}
TRAIN = {"num_workers": 1, "cpus_per_worker": 2.0, "batch_size": 16, "log_every": 20}


def _config(storage: str, name: str, data: dict, epochs: int, lr: float, init: str = "") -> Config:
    return config_from_dict({
        "method": "supervised",
        "run": {"storage": storage, "name": name, "seed": 0},
        "data": {"kind": "synthetic", "image_size": 64, "crop_size": 64, "scale_min": 0.75, "scale_max": 1.5,
                 **data},
        "model": {**MODEL, "init_weights": init},
        "optim": {"name": "sgd", "lr": lr, "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 10},
        "train": {**TRAIN, "epochs": epochs},
    })


def source_config(storage: str, b: DemoBudget) -> Config:
    data = {"domain": "A", "num_train": b.source_images, "num_val": b.val_images}
    return _config(storage, "pretrain-supervised-A", data, b.pretrain_epochs, lr=0.05)


def target_config(storage: str, b: DemoBudget, name: str, init: str = "") -> Config:
    data = {"domain": "C", "num_train": b.target_images, "num_val": b.val_images}
    return _config(storage, f"finetune-C-{name}", data, b.finetune_epochs, lr=0.02, init=init)


def classifier_config(storage: str, b: DemoBudget) -> Config:
    """The PSSL ensemble members: torchvision classifiers on the synthetic classification set (12 classes)."""
    return config_from_dict({
        "method": "classifier",
        "run": {"storage": storage, "name": "ensemble", "seed": 0},
        "classifier": {"archs": ENSEMBLE, "num_images": b.classification_images, "num_val": b.val_images,
                       "image_size": 64},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 10},
        "train": {**TRAIN, "epochs": b.classifier_epochs, "batch_size": 32},
    })


def label_config(storage: str, b: DemoBudget, images: str, members: list[str]) -> Config:
    return config_from_dict({
        "run": {"storage": storage, "seed": 0},
        "label": {"images": images, "true_masks": f"{images}_masks", "output": str(Path(storage) / "labels"),
                  "members": members, "input_size": 64, "samples": b.smoothgrad_samples, "shard_size": 128,
                  "batch_size": 16, "cpus_per_actor": 1.0},
    })


def pssl_config(storage: str, b: DemoBudget, labels: str, images: str) -> Config:
    cfg = _config(storage, "pretrain-pssl", {"num_val": b.val_images}, b.pretrain_epochs, lr=0.05)
    data = cfg.to_dict()
    data["method"] = "pssl"
    data["pssl"] = {"labels": labels, "images": images, "num_classes": 12, "bg_weight": 0.1}
    return config_from_dict(data)


def format_table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'pre-training':<28} {'mIoU':>6} {'pixel acc':>9} {'minutes':>7}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        lines.append(f"{name:<28} {100 * r['miou']:6.2f} {100 * r['pixel_accuracy']:9.2f} {r['minutes']:7.1f}")
    return "\n".join(lines)


def run_demo(storage: str = "rayseg_runs/demo", quick: bool = False, address: str | None = None) -> list:
    budget = QUICK if quick else FULL
    storage = str(Path(storage) / ("quick" if quick else "full"))
    ensure_ray(address)
    rows: list[tuple[str, dict]] = []

    def finetune(label: str, name: str, init: str = "") -> None:
        start = time.perf_counter()
        cfg = target_config(storage, budget, name, init)
        print(f"\n[demo] fine-tune on domain C ({label})", flush=True)
        train(cfg, "finetune")
        metrics = json.loads((Path(cfg.run_dir("finetune")) / "metrics.json").read_text())
        rows.append((label, {**metrics, "minutes": (time.perf_counter() - start) / 60}))

    finetune("none (from scratch)", "scratch")
    print("\n[demo] supervised pre-training on domain A", flush=True)
    src = source_config(storage, budget)
    summary = train(src, "pretrain")
    finetune("supervised on domain A", "supervised", init=summary["export"]["model"])

    print("\n[demo] PSSL: train the explanation ensemble on the synthetic classification set", flush=True)
    from rayseg.data.synthetic import SyntheticClassification, write_image_folder
    from rayseg.labeling.job import labeling_job
    from rayseg.labeling.pipeline import run_labeling
    from rayseg.labeling.train_members import format_members_table, train_members

    members = train_members(classifier_config(storage, budget))
    print(format_members_table(members))
    images = str(Path(storage) / "classification" / "images")  # the very images the members were trained on
    write_image_folder(SyntheticClassification(num_images=budget.classification_images, image_size=64, seed=0,
                                               split="train"), images)
    print("\n[demo] PSSL: label them with the ensemble (SmoothGrad, Ray Data)", flush=True)
    labels = run_labeling(labeling_job(label_config(storage, budget, images,
                                                    [f"{m['arch']}:{m['weights']}" for m in members])))
    print("\n[demo] PSSL: pre-train on the pseudo labels", flush=True)
    summary = train(pssl_config(storage, budget, labels["version_dir"], images), "pretrain")
    finetune("PSSL (ensemble pseudo labels)", "pssl", init=summary["export"]["model"])

    table = format_table(rows)
    label_iou = ", ".join(f"{name} {100 * v:.1f}" for name, v in labels["iou_members"].items())
    print(f"\n[demo] PSSL pseudo-label quality (IoU of the top decile with the true object mask, "
          f"{labels['iou_images']} images): ensemble {100 * labels['iou_ensemble']:.1f}; members {label_iou}")
    print(f"\n[demo] fine-tune on synthetic domain C ({budget.target_images} labelled images, "
          f"{budget.finetune_epochs} epochs), evaluated on {budget.val_images} held-out images:\n{table}")
    Path(storage).mkdir(parents=True, exist_ok=True)
    (Path(storage) / "demo_results.json").write_text(json.dumps(rows, indent=2))
    return rows
