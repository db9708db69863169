import math

import pytest
import torch

from rayseg.config import OptimSection
from rayseg.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups


def test_poly_with_warmup_values():
    f = lr_factor(OptimSection(schedule="poly", poly_power=0.9, warmup_steps=4, warmup_start=0.2), 100, 10)
    assert f(0) == pytest.approx(0.2)
    assert f(2) == pytest.approx((1 - 2 / 100) ** 0.9 * (0.2 + 0.8 * 2 / 4))
    assert f(4) == pytest.approx((1 - 4 / 100) ** 0.9)
    assert f(100) == 0.0


def test_cosine_and_step_values():
    cos = lr_factor(OptimSection(schedule="cosine"), 10, 5)
    assert cos(0) == pytest.approx(1.0) and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    step = lr_factor(OptimSection(schedule="step", step_epochs=[2, 3], step_gamma=0.1), 40, 10)
    assert [step(s) for s in (0, 19, 20, 29, 30)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_scheduler_drives_the_optimizer_and_heads_get_their_multiplier():
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(2, 2), "decoder": torch.nn.Linear(2, 2)})
    opt_cfg = OptimSection(name="sgd", lr=0.1, schedule="poly", poly_power=1.0, head_lr_mult=10.0)
    groups = parameter_groups(model, opt_cfg)
    opt = build_optimizer(groups, opt_cfg)
    sched = build_scheduler(opt, opt_cfg, total_steps=4, steps_per_epoch=2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 1.0])
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.075, 0.75])
    state = sched.state_dict()
    assert state["last_epoch"] == 1
    assert isinstance(build_optimizer(model.parameters(), OptimSection(name="adamw")), torch.optim.AdamW)
    assert math.isclose(opt.param_groups[0]["momentum"], 0.9)
