"""`rayseg train-classifiers`: train the PSSL ensemble members and measure their top-1 accuracy (driver side).

Each architecture of ``classifier.archs`` is one run of method ``classifier`` through the shared engine
(:func:`rayseg.engine.runner.train`), in its own deterministic run folder, so re-running the command resumes
unfinished members and does no work for finished ones. The member config is the user's config with
``method: classifier``, ``classifier.arch: <arch>`` and ``classifier.archs: [<arch>]`` (so adding a member to the
list does not change the folder, hence the weights, of the others). The run folder is
``<command>-<arch>-<fingerprint of the member config>``, or ``<run.name>-<arch>`` when ``run.name`` is set.

Accuracy is measured here in plain PyTorch (eval mode, no Ray) on the exported ``classifier.pt`` checked and
loaded by :mod:`rayseg.labeling.members` (exactly what ``rayseg label`` will do), with the labeling
preprocessing: on the synthetic set's held-out ``val`` split (``classifier.num_val`` images); with
``classifier.images`` (an ImageFolder, no held-out split) on the training images themselves — the row's
``split`` is then ``"train"`` and the table says so.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rayseg.commands.args import resolve
from rayseg.commands.train import preflight
from rayseg.config import Config, config_from_dict
from rayseg.tables import format_table

if TYPE_CHECKING:
    import torch

__all__ = ["evaluate_accuracy", "format_members_table", "member_config", "run", "train_members"]


def member_config(cfg: Config, arch: str, command: str = "train-classifiers") -> Config:
    """The (validated) config that trains ensemble member ``arch``."""
    data = cfg.to_dict()
    data["method"] = "classifier"
    data["classifier"]["arch"] = arch
    data["classifier"]["archs"] = [arch]
    data["run"]["name"] = ""
    member = config_from_dict(data)
    folder = arch.replace("/", "-")  # timm/<model> names one folder
    member.run.name = f"{cfg.run.name}-{folder}" if cfg.run.name else f"{command}-{folder}-{member.fingerprint()}"
    return member


def evaluate_accuracy(model: torch.nn.Module, dataset, batch_size: int = 64) -> tuple[float, int, int]:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``dataset`` items ``{"image", "label"}``.

    Returns ``(accuracy, images scored, bad samples skipped)``; accuracy is NaN when nothing could be scored."""
    import torch
    from torch.utils.data import DataLoader

    from rayseg.data import collate_skip_bad

    model.eval()
    device = next(model.parameters()).device
    correct = total = skipped = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_skip_bad):
        skipped += len(batch.get("skipped", []))
        if "image" not in batch:
            continue
        with torch.no_grad():
            pred = model(batch["image"].to(device)).argmax(dim=1).cpu()
        correct += int((pred == batch["label"]).sum())
        total += int(batch["label"].numel())
    return (correct / total if total else math.nan), total, skipped


def train_members(cfg: Config, command: str = "train-classifiers", address: str | None = None) -> list[dict]:
    """Train (or resume, or skip when finished) every member of ``cfg.classifier.archs``; one row per member:
    ``{"arch", "weights", "accuracy", "split", "images", "skipped", "run_dir"}``."""
    from rayseg.data.classification import build_classification_dataset
    from rayseg.engine.runner import train
    from rayseg.labeling.members import Member, load_members
    from rayseg.methods import METHODS
    from rayseg.models.weights import read_weight_file

    cfg.classifier.check_inputs()  # every listed architecture, before any member trains
    members = [member_config(cfg, arch, command) for arch in cfg.classifier.archs]  # all validated up front
    held_out = not cfg.classifier.images
    eval_set = None
    rows = []
    for member in members:
        summary = train(member, command, METHODS["classifier"], address=address)
        weights = summary["export"]["classifier"]
        num_classes = int(read_weight_file(weights)["num_classes"])
        (model,) = load_members([Member(member.classifier.arch, weights)], num_classes)  # checks the fit
        if eval_set is None:
            eval_set = build_classification_dataset(member, train=False, split="val" if held_out else "train",
                                                    num_images=member.classifier.num_val if held_out else None)
        accuracy, scored, skipped = evaluate_accuracy(model, eval_set)
        rows.append({"arch": member.classifier.arch, "weights": weights, "accuracy": accuracy,
                     "split": "val" if held_out else "train", "images": scored, "skipped": skipped,
                     "run_dir": member.run_dir(command)})
    return rows


def format_members_table(rows: Sequence[dict]) -> str:
    """A plain-text table: architecture, top-1 accuracy (and on which images), weights file."""
    lines = []
    for r in rows:
        split = r.get("split", "val")
        where = f"{r.get('images', '?')} {'held-out val' if split == 'val' else 'TRAINING'} images"
        acc = r["accuracy"]
        lines.append((r["arch"], "n/a" if acc != acc else f"{100 * acc:.1f}%", where, r["weights"]))
    out = format_table(("member", "top-1 acc", "measured on", "weights"), lines)
    if any(r.get("split") == "train" for r in rows):
        out += "\n(classifier.images has no held-out split: accuracy is on the training images)"
    return out


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    for arch in cfg.classifier.archs:
        preflight(member_config(cfg, arch))
    rows = train_members(cfg, address=args.address)
    print(format_members_table(rows))
    members = ", ".join(f"{r['arch']}:{r['weights']}" for r in rows)
    print(f"[rayseg] label with: label.members=[{members}]")
    return 0
