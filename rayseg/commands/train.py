"""``rayseg pretrain`` and ``rayseg finetune``: one training run through the shared engine (Ray Train).

Before Ray starts, :func:`preflight` builds the training set and the method (with its init weights) on the
driver, so that a missing folder, a wrong split file or weights that do not fit the model fail as one line.
torch and the methods are imported after the config is checked, so a config error comes back in well under a
second.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rayseg import storage
from rayseg.commands.args import resolve
from rayseg.config import Config, ConfigError

if TYPE_CHECKING:
    from rayseg.methods.base import Method


def preflight(cfg: Config) -> type[Method]:
    """The method class of ``cfg.method``, after building its training set and model once on the driver (a
    missing input or unfit weights: one ConfigError line before Ray starts)."""
    from rayseg.labeling.shards import CorruptShardError
    from rayseg.methods import METHODS
    from rayseg.models.weights import WeightsError

    method_cls = METHODS[cfg.method]
    try:
        train_set = method_cls.train_dataset(cfg)
        if len(train_set) == 0:
            raise ConfigError(f"the training split '{cfg.data.train_split}' is empty", "data.train_split")
        per_step = cfg.train.batch_size * max(1, cfg.train.num_workers)
        if len(train_set) < per_step:
            raise ConfigError(f"{cfg.train.batch_size} per worker x {max(1, cfg.train.num_workers)} worker(s) = "
                              f"{per_step} images per step, but the training set has {len(train_set)}",
                              "train.batch_size")
        method = method_cls.from_config(cfg, train_set)
    except (FileNotFoundError, WeightsError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        key = ("model.init_weights" if isinstance(e, WeightsError) else
               "pssl.labels" if isinstance(e, CorruptShardError) else "")
        raise ConfigError(str(e).splitlines()[0], key) from None
    for module in method.modules():
        if getattr(module, "init_report", None) is not None:
            print(f"[rayseg] {module.init_report.summary()}", flush=True)
    check_free_space(cfg, method)
    return method_cls


def check_free_space(cfg: Config, method: Method) -> None:
    """A local ``run.storage`` without room for the run's checkpoints fails now, not after the first epoch. A
    checkpoint holds the method's state, the optimizer's moments (1 per weight for SGD with momentum, 2 for
    AdamW) and the exported weights (about the state again): ``(2 + moments) x state bytes``; Ray Train keeps
    ``train.keep_checkpoints`` of them and writes the next before deleting the oldest. An object store is not
    checked."""
    import torch

    if storage.is_uri(cfg.run.storage):
        return
    state = sum(t.numel() * t.element_size() for t in method.state_dict().values() if isinstance(t, torch.Tensor))
    moments = 2 if cfg.optim.name == "adamw" else 1 if cfg.optim.momentum > 0 else 0
    per_checkpoint = (2 + moments) * state
    need = per_checkpoint * (cfg.train.keep_checkpoints + 1)
    folder = Path(cfg.run.storage).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and shutil.disk_usage(folder).free < need:
        raise ConfigError(f"{folder} has {_mib(shutil.disk_usage(folder).free)} free, but this run's "
                          f"{cfg.train.keep_checkpoints} + 1 checkpoints need about {_mib(need)} "
                          f"({_mib(per_checkpoint)} each)", "run.storage")


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def train_command(cfg: Config, command: str, address: str | None = None) -> dict:
    """Check, train (or resume) and print the outcome of one run; returns its summary."""
    from rayseg.engine.runner import train

    method_cls = preflight(cfg)
    print(f"[rayseg] {command} {cfg.method}: run folder {cfg.run_dir(command)}", flush=True)
    summary = train(cfg, command, method_cls, address=address)
    print_summary(command, cfg, summary)
    return summary


def print_summary(command: str, cfg: Config, summary: dict) -> None:
    from rayseg.engine.metrics import format_metrics_table

    run_dir = cfg.run_dir(command)
    rate = summary.get("images_per_s")
    print(f"[rayseg] done: {summary['steps']} steps, {rate:.1f} img/s" if rate else "[rayseg] done", flush=True)
    if summary.get("skipped_bad_samples"):
        print(f"[rayseg] skipped {summary['skipped_bad_samples']} bad samples (listed in "
              f"{storage.join(run_dir, 'bad_samples.txt')})")
    metrics_file = storage.join(run_dir, "metrics.json")
    if command == "finetune" and storage.is_file(metrics_file):
        print(format_metrics_table(json.loads(storage.read_text(metrics_file))))
    for name, path in summary["export"].items():
        print(f"[rayseg] exported {name}: {path}")


def run_pretrain(args: argparse.Namespace) -> int:
    train_command(resolve(args), "pretrain", args.address)
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    if cfg.method != "supervised":
        raise ConfigError(f"finetune trains with method 'supervised', got '{cfg.method}'", "method")
    train_command(cfg, "finetune", args.address)
    return 0
