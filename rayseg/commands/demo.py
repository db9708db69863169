"""``rayseg demo``: every step of rayseg on the embedded synthetic benchmark, on a local Ray cluster.

The question the demo answers is the one the papers ask: which pre-training gives the best start for a small
labelled target set (synthetic domain C, whose classes only partly overlap the sources'), at the same
fine-tuning budget? Starts:

* ``scratch``: random initialisation;
* ``supervised-A``: supervised pre-training on labelled domain A;
* ``PSSL``: classifiers trained on the synthetic classification set explain it (SmoothGrad ensemble, Ray Data),
  the top-decile pseudo masks train a (K+1)-way segmentation network;
* ``MDP-A+B`` / ``MDP-A``: multi-dataset pre-training on labelled domains A and B (half of the images each), and
  the same method on A alone (the single-dataset row);
* ``PixCon-SR`` / ``DenseCL``: self-supervised dense contrast on the unlabelled scenes of domain A (PixCon with
  BYOL's asymmetric views, DenseCL as published: MoCo-v2's symmetric views and heads without BatchNorm).

Each start is fine-tuned on C with the plain 1x1 classifier and with the SSA head, for every seed of the
budget (the fine-tune seed changes initialisation of the new layers, data order and augmentation; each start is
pre-trained once). Every fine-tune run folder gets a ``tags.json`` (``run.tags``) and the closing report
(:mod:`rayseg.commands.report`) tabulates mean ± std over seeds and draws ``report.png``.

All pre-training runs use the same model (resnet18 + FCN head, output stride 16, 64x64 images), the same
number of source images and epochs; all fine-tunes the same data, schedule and epochs. Training runs in Ray
Train's local mode (``train.num_workers: 0``, in the driver): starting a worker group costs about 18 s on a
2-core machine (controller, worker process, imports), longer than a fine-tune here, and the full demo has 36
training runs in its 20-minute budget. ``rayseg pretrain`` with ``train.num_workers >= 1`` runs the same loop
on Ray Train workers (the tests do, on 1 and 2 nodes). Labelling always runs on Ray Data. Fine-tune runs keep
their export and metrics; their resume checkpoints are removed once they finish (about 175 MB each).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rayseg.storage import write_text
from rayseg.config import Config, config_from_dict


@dataclass(frozen=True)
class DemoBudget:
    source_images: int     # images of each pre-training run (MDP-A+B: half from A, half from B)
    target_images: int     # labelled domain-C images for fine-tuning
    val_images: int        # held-out domain-C images for the mIoU
    pretrain_epochs: int
    finetune_epochs: int
    classification_images: int  # PSSL: the classification set the ensemble is trained on and then labels
    classifier_epochs: int
    smoothgrad_samples: int
    seeds: tuple[int, ...]
    ensemble: tuple[str, ...]


FULL = DemoBudget(source_images=320, target_images=96, val_images=128, pretrain_epochs=5, finetune_epochs=5,
                  classification_images=256, classifier_epochs=5, smoothgrad_samples=8, seeds=(0, 1),
                  ensemble=("resnet18", "resnet34"))
QUICK = DemoBudget(source_images=64, target_images=32, val_images=32, pretrain_epochs=1, finetune_epochs=2,
                   classification_images=48, classifier_epochs=1, smoothgrad_samples=2, seeds=(0,),
                   ensemble=("resnet18", "resnet34"))

STARTS = ("scratch", "supervised-A", "PSSL", "MDP-A+B", "MDP-A", "PixCon-SR", "DenseCL")
HEADS = ("linear", "ssa")

# One small network for every run: resnet18 + FCN head at output stride 16 on 64x64 images.
MODEL = {"backbone": "resnet18", "head": "fcn", "output_stride": 16, "channels": 64}
PRETRAIN = {"num_workers": 0, "cpus_per_worker": 2.0, "batch_size": 16, "log_every": 20, "keep_checkpoints": 1}
# batch 8: 60 steps over 5 epochs of 96 images; a linear head needs the steps more than the images
FINETUNE = {"num_workers": 0, "cpus_per_worker": 2.0, "batch_size": 8, "log_every": 20, "keep_checkpoints": 1}
DATA = {"kind": "synthetic", "image_size": 64, "crop_size": 64, "scale_min": 0.75, "scale_max": 1.5}
SGD = {"name": "sgd", "weight_decay": 1e-4, "schedule": "poly", "warmup_steps": 10}
# DenseCL as published trains with MoCo-v2's symmetric views (PixCon with BYOL's asymmetric ones, the defaults)
MOCO_V2_VIEWS = {"jitter": [0.4, 0.4, 0.4, 0.1], "blur_prob": [0.5, 0.5], "solarize_prob": [0.0, 0.0]}


def _pretrain(storage: str, b: DemoBudget, name: str, method: str, data: dict, lr: float = 0.05, **sections) -> Config:
    return config_from_dict({
        "method": method,
        "run": {"storage": storage, "name": f"pretrain-{name}", "seed": 0},
        "data": {**DATA, "num_val": b.val_images, **data},
        "model": MODEL,
        "optim": {**SGD, "lr": lr},
        "train": {**PRETRAIN, "epochs": b.pretrain_epochs},
        **sections,
    })


def pretrain_configs(storage: str, b: DemoBudget) -> dict[str, Config]:
    """The pre-training run of every start except scratch and PSSL (whose labels come first)."""
    half = b.source_images // 2
    contrastive_views = {"crop_size": 64, "scale_min": 0.2, "scale_max": 1.0}
    return {
        "supervised-A": _pretrain(storage, b, "supervised-A", "supervised",
                                  {"domain": "A", "num_train": b.source_images}),
        "MDP-A+B": _pretrain(storage, b, "mdp-AB", "mdp", {"num_train": half},
                             mdp={"datasets": ["synthetic:A", "synthetic:B"]}),
        "MDP-A": _pretrain(storage, b, "mdp-A", "mdp", {"num_train": b.source_images},
                           mdp={"datasets": ["synthetic:A"]}),
        "PixCon-SR": _pretrain(storage, b, "pixcon-sr", "pixcon", {"domain": "A", "num_train": b.source_images},
                               views=contrastive_views,
                               pixcon={"variant": "sr", "queue_size": max(32, b.source_images // 2),
                                       "proj_hidden_dim": 512, "pred_hidden_dim": 512}),
        "DenseCL": _pretrain(storage, b, "densecl", "densecl", {"domain": "A", "num_train": b.source_images},
                             views={**contrastive_views, **MOCO_V2_VIEWS},
                             densecl={"queue_size": max(32, b.source_images // 2), "proj_hidden_dim": 512,
                                      "dense_warmup_steps": max(1, b.pretrain_epochs * b.source_images // 16 // 20)}),
    }


def finetune_config(storage: str, b: DemoBudget, start: str, head: str, seed: int, init: str = "") -> Config:
    return config_from_dict({
        "method": "supervised",
        "run": {"storage": storage, "name": f"finetune-C-{start}-{head}-s{seed}", "seed": seed,
                "tags": {"start": start}},  # head and seed are tags.json's defaults
        "data": {**DATA, "domain": "C", "num_train": b.target_images, "num_val": b.val_images},
        "model": {**MODEL, "init_weights": init, "classifier": head},
        "optim": {**SGD, "lr": 0.02},
        "train": {**FINETUNE, "epochs": b.finetune_epochs},
        # 4x4 feature maps at output stride 16: the official 6-pixel border would leave no boundary band
        "ssa": {"edge_border": 1},
    })


def classifier_config(storage: str, b: DemoBudget) -> Config:
    """The PSSL ensemble members: torchvision classifiers on the synthetic classification set (12 classes)."""
    return config_from_dict({
        "method": "classifier",
        "run": {"storage": storage, "name": "ensemble", "seed": 0},
        "classifier": {"archs": list(b.ensemble), "num_images": b.classification_images, "num_val": b.val_images,
                       "image_size": 64},
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 10},
        "train": {**PRETRAIN, "epochs": b.classifier_epochs, "batch_size": 32},
    })


def label_config(storage: str, b: DemoBudget, images: str, members: list[str]) -> Config:
    return config_from_dict({
        "run": {"storage": storage, "seed": 0},
        "label": {"images": images, "true_masks": f"{images}_masks", "output": str(Path(storage) / "labels"),
                  "members": members, "num_classes": 12,  # the members' classes, even if a tiny set lacks one
                  "input_size": 64, "explainer": {"samples": b.smoothgrad_samples}, "shard_size": 128,
                  "batch_size": 16, "cpus_per_actor": 1.5, "cpus_per_task": 0.5},  # 2 torch threads on 2 cores
    })


def pssl_config(storage: str, b: DemoBudget, labels: str, images: str) -> Config:
    return _pretrain(storage, b, "pssl", "pssl", {},
                     pssl={"labels": labels, "images": images, "num_classes": 12, "bg_weight": 0.1})


def _train(cfg: Config, command: str) -> dict:
    from rayseg.engine.runner import train
    from rayseg.methods import METHODS

    return train(cfg, command, METHODS[cfg.method])


def _export(summary: dict, cfg: Config) -> str:
    from rayseg.methods import METHODS

    return summary["export"][METHODS[cfg.method].export_part]


def run_pssl(storage: str, b: DemoBudget) -> tuple[str, dict]:
    """Train the ensemble, label the classification set, pre-train on the labels; (export, labeling summary)."""
    from rayseg.commands.claims import label_classification_set

    print("\n[demo] PSSL: ensemble, labels, pre-training", flush=True)
    labels, images = label_classification_set(classifier_config(storage, b), storage,
                                              lambda images, members: label_config(storage, b, images, members))
    print("\n[demo] PSSL: pre-train on the pseudo labels", flush=True)
    cfg = pssl_config(storage, b, labels["version_dir"], images)
    return _export(_train(cfg, "pretrain"), cfg), labels


def run_demo(storage: str = "rayseg_runs/demo", quick: bool = False, address: str | None = None) -> dict:
    from rayseg.commands.report import write_report
    from rayseg.engine.checkpoint import LocalCheckpointStore
    from rayseg.engine.runner import ensure_ray

    budget = QUICK if quick else FULL
    storage = str(Path(storage) / ("quick" if quick else "full"))
    ensure_ray(address)
    demo_start = time.perf_counter()

    inits: dict[str, str] = {"scratch": ""}
    configs = pretrain_configs(storage, budget)
    for start in STARTS[1:]:
        if start == "PSSL":
            inits[start], labels = run_pssl(storage, budget)
            continue
        cfg = configs[start]
        print(f"\n[demo] pre-train {start} ({cfg.method})", flush=True)
        inits[start] = _export(_train(cfg, "pretrain"), cfg)

    for start in STARTS:
        for head in HEADS:
            for seed in budget.seeds:
                cfg = finetune_config(storage, budget, start, head, seed, inits[start])
                run_dir = Path(cfg.run_dir("finetune"))
                print(f"\n[demo] fine-tune on domain C from {start}, {head} head, seed {seed}", flush=True)
                _train(cfg, "finetune")
                # 28 fine-tunes x ~175 MB: keep the export and metrics, not the resume checkpoint
                shutil.rmtree(run_dir / LocalCheckpointStore.FOLDER, ignore_errors=True)

    report = write_report(storage, start_order=STARTS,
                          title=f"fine-tune on synthetic domain C ({budget.target_images} images, "
                                f"{budget.finetune_epochs} epochs)")
    label_iou = ", ".join(f"{name} {100 * v:.1f}" for name, v in labels["iou_members"].items())
    print(f"\n[demo] PSSL pseudo-label quality (IoU of the top decile with the true object mask, "
          f"{labels['iou_images']} images): ensemble {100 * labels['iou_ensemble']:.1f}; members {label_iou}")
    minutes = (time.perf_counter() - demo_start) / 60
    print(f"\n[demo] fine-tune on synthetic domain C ({budget.target_images} labelled images, "
          f"{budget.finetune_epochs} epochs, seeds {list(budget.seeds)}), mIoU on {budget.val_images} held-out "
          f"images:\n{report['table']}\n[demo] chart: {report['png']}; per run: {report['csv']}; "
          f"{minutes:.1f} minutes")
    claims = demo_claims(storage, budget)
    results = {"summary": report["summary"], "labels": {k: labels[k] for k in ("iou_ensemble", "iou_members",
                                                                                "iou_images")},
               "minutes": minutes, "claims": {r.claim.key: r.verdict for r in claims}}
    write_text(Path(storage) / "demo_results.json", json.dumps(results, indent=2))
    return results


def demo_claims(storage: str, budget: DemoBudget) -> list:
    """The papers' claims the demo's runs can judge (:mod:`rayseg.claims`), printed and written to
    ``<storage>/claims``. With one pre-training and one or two fine-tune seeds per start the intervals are wide:
    the demo shows the machinery, ``rayseg claims`` has the budget to decide."""
    from rayseg.commands.claims import judge, write_claims

    results = judge(storage)
    written = write_claims(storage, results, {"budget": "demo", "seeds": list(budget.seeds)},
                           f"claims the demo can judge ({len(budget.seeds)} fine-tune seeds)")
    print(f"\n[demo] the papers' claims at the demo's budget (paired by fine-tune seed; 'not run': the demo has no "
          f"such runs; `rayseg claims` runs them all with 2 pre-training x 5 fine-tune seeds):\n{written['table']}\n"
          f"[demo] {written['dir']}: claims.json, claims.md, claims.png", flush=True)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller budget (a smoke test of every step)")
    p.add_argument("--storage", default="rayseg_runs/demo", help="where the demo's runs go")
    p.add_argument("--address", help="Ray cluster to join (default: a local cluster)")


def run(args: argparse.Namespace) -> int:
    run_demo(storage=args.storage, quick=args.quick, address=args.address)
    return 0
