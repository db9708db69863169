"""Training-state checkpoints: one directory with ``state.pt`` (everything needed to resume) and the method's
exported weights (``Method.export``: ``model.pt`` / ``backbone.pt`` for segmentation methods, which
``rayseg finetune`` reads).

``state.pt`` holds the method's state dict (model plus method state such as prototypes or queues), optimizer,
lr scheduler, epoch and global step. There is no GradScaler: mixed precision is bf16, which needs none. RNG
state is not stored because the engine reseeds from (seed, epoch, rank) at every epoch start, so a resumed run
draws the same data order and augmentations as an uninterrupted one.

Ray Train stores and restores these directories (``ray.train.report(checkpoint=...)``). In Train local mode
(``num_workers=0``) Ray keeps checkpoints in memory only, so :class:`LocalCheckpointStore` keeps them in the run
folder instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


STATE_FILE = "state.pt"


def save_checkpoint(directory: str | os.PathLike, method, optimizer, scheduler, epoch: int, global_step: int,
                    meta: dict) -> None:
    directory = Path(directory)
    torch.save({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "global_step": global_step},
               directory / STATE_FILE)
    method.export(directory, meta)


def load_checkpoint(directory: str | os.PathLike, method, optimizer, scheduler) -> tuple[int, int]:
    """Restore the state in place; returns (last finished epoch, global step)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), int(state["global_step"])


class LocalCheckpointStore:
    """Checkpoints as ``<run_dir>/local_checkpoints/epoch_NNNNNN`` (atomic rename), the newest ``keep`` kept."""

    FOLDER = "local_checkpoints"

    def __init__(self, run_dir: str | os.PathLike, keep: int):
        self.root = Path(run_dir) / self.FOLDER
        self.keep = keep

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("epoch_*") if (p / STATE_FILE).is_file())
        return done[-1] if done else None

    def commit(self, source: str | os.PathLike, epoch: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"epoch_{epoch:06d}"
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        for old in sorted(p for p in self.root.glob("epoch_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target
