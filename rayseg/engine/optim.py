"""Optimizers and learning-rate schedules (per optimizer step) from :class:`rayseg.config.OptimSection`.

Schedules multiply the base lr by ``f(step)``, after a linear warm-up from ``warmup_start`` to 1:
- ``poly``: ``(1 - s/S) ** power`` (S = total steps), as in DeepLab / MMSegmentation;
- ``cosine``: ``0.5 (1 + cos(pi s / S))``;
- ``step``: ``gamma ** (number of step_epochs already reached)``;
- ``constant``: 1.
``torch.optim.lr_scheduler.LambdaLR`` applies them, so the scheduler's state dict is just its step count.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from rayseg.config import OptimSection


def lr_factor(opt: OptimSection, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The multiplier of the base lr at optimizer step ``step`` (0-based)."""
    total = max(total_steps, 1)
    milestones = sorted(e * steps_per_epoch for e in opt.step_epochs)

    def factor(step: int) -> float:
        if opt.schedule == "poly":
            f = max(1.0 - step / total, 0.0) ** opt.poly_power
        elif opt.schedule == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        elif opt.schedule == "step":
            f = opt.step_gamma ** bisect.bisect_right(milestones, step)
        else:
            f = 1.0
        if step < opt.warmup_steps:
            f *= opt.warmup_start + (1.0 - opt.warmup_start) * step / opt.warmup_steps
        return f

    return factor


def parameter_groups(model: nn.Module, opt: OptimSection) -> list[dict]:
    """Backbone parameters at the base lr; everything else (heads, classifiers) at ``lr * head_lr_mult``."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if ".backbone." in f".{name}" else rest).append(p)
    groups = [{"params": backbone, "lr": opt.lr}, {"params": rest, "lr": opt.lr * opt.head_lr_mult}]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable, opt: OptimSection) -> torch.optim.Optimizer:
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.name == "adamw":
        return torch.optim.AdamW(params, lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {opt.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, opt: OptimSection, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(opt, total_steps, steps_per_epoch))
