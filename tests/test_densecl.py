"""DenseCL (methods.md §4.7): MoCo-v2 momentum, no predictors, similarity-matched dense loss, dense warm-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rayseg.config import load_config
from rayseg.methods import METHODS
from rayseg.methods.contrastive import (
    ContrastiveEncoder,
    DenseInfoNCE,
    GlobalInfoNCE,
    similarity_match,
)
from rayseg.methods.densecl import DenseCL
from rayseg.models import build_backbone
from tests.test_pixcon import ARCH, one_thread, tiny_batch  # noqa: F401 - one_thread is an autouse fixture

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def tiny_densecl(**kw) -> DenseCL:
    encoder = ContrastiveEncoder(build_backbone("resnet18", 8), proj_hidden_dim=32, proj_dim=8)
    return DenseCL(encoder, ARCH, queue_size=16, **kw)


def _expected(method: DenseCL, batch: dict, directions, queues) -> tuple[float, float]:
    """Σ L_g and Σ L_d over ``directions`` recomputed from the parts (no predictors, unit dense weights)."""
    views = (batch["image"], batch["view2"])
    lg = ld = 0.0
    with torch.no_grad():
        for a, b in directions:
            on, tg = method.online(views[a]), method.target(views[b])
            q, k = F.normalize(on.global_, dim=1), F.normalize(tg.global_, dim=1)
            lg += GlobalInfoNCE(0.2)(q, k, queues[0]).item()
            u = F.normalize(on.dense.flatten(2).transpose(1, 2), dim=-1)
            v = F.normalize(tg.dense.flatten(2).transpose(1, 2), dim=-1)
            match, _ = similarity_match(on.features, tg.features)
            ld += DenseInfoNCE(0.2)(u, v, match, queues[1]).item()
    return lg, ld


def test_densecl_has_no_predictors_and_a_fixed_momentum():
    torch.manual_seed(0)
    method = tiny_densecl()
    assert not any("predictor" in name for name, _ in method.named_parameters())
    assert METHODS["densecl"] is DenseCL and DenseCL.export_part == "backbone"
    before = {k: v.clone() for k, v in method.target.named_parameters()}
    with torch.no_grad():
        for p in method.online.parameters():
            p.add_(0.5)
    for step, total in ((1, 10), (9, 10)):  # the same momentum early and late
        snapshot = {k: v.clone() for k, v in method.target.named_parameters()}
        method.on_step_end(step, total)
        assert method.momentum == 0.999
        online = dict(method.online.named_parameters())
        for name, p in method.target.named_parameters():
            torch.testing.assert_close(p, 0.999 * snapshot[name] + 0.001 * online[name])
    assert any(not torch.equal(before[k], v) for k, v in method.target.named_parameters())


def test_dense_loss_is_off_during_the_warm_up_but_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    method = tiny_densecl(dense_warmup_steps=2, loss_lambda=0.5)
    batch = tiny_batch()
    queues = (method.global_queue.snapshot(), method.dense_queue.snapshot())
    lg, ld = _expected(method, batch, ((0, 1),), queues)
    losses = method(batch)
    assert losses["dense"].item() == 0.0
    assert losses["global"].item() == pytest.approx(lg, rel=1e-5)  # (1 - 0) L_g
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)  # DDP-safe: 0 · L_d is in the graph
    assert all(p.grad is None for p in method.target.parameters())
    method.on_step_end(1, 100)
    assert method.current_lambda() == 0.0
    method.on_step_end(2, 100)
    assert method.current_lambda() == 0.5 and int(method.steps_done) == 2  # a buffer: resumes from checkpoints
    assert "steps_done" in method.state_dict()
    queues = (method.global_queue.snapshot(), method.dense_queue.snapshot())
    lg, ld = _expected(method, batch, ((0, 1),), queues)
    losses = method(batch)
    assert losses["global"].item() == pytest.approx(0.5 * lg, rel=1e-5)
    assert losses["dense"].item() == pytest.approx(0.5 * ld, rel=1e-5)


def test_asymmetric_enqueues_the_key_view_and_symmetric_sums_both_directions():
    torch.manual_seed(0)
    method = tiny_densecl(dense_warmup_steps=0)
    batch = tiny_batch()
    method(batch)
    with torch.no_grad():
        key = method.target(batch["view2"])
    torch.testing.assert_close(method.global_queue.keys[:4], F.normalize(key.global_, dim=1))
    torch.testing.assert_close(method.dense_queue.keys[:4], F.normalize(key.dense.mean(dim=(2, 3)), dim=1))

    torch.manual_seed(0)
    symmetric = tiny_densecl(dense_warmup_steps=0, symmetric=True)
    queues = (symmetric.global_queue.snapshot(), symmetric.dense_queue.snapshot())
    lg, ld = _expected(symmetric, batch, ((0, 1), (1, 0)), queues)
    losses = symmetric(batch)
    assert losses["global"].item() == pytest.approx(0.5 * lg, rel=1e-5)
    assert losses["dense"].item() == pytest.approx(0.5 * ld, rel=1e-5)


def test_shipped_configs_select_the_methods_and_their_recipes():
    for name, method in (("pretrain_pixcon.yaml", "pixcon"), ("pretrain_densecl.yaml", "densecl")):
        cfg = load_config(CONFIGS / name)
        assert cfg.method == method and cfg.model.backbone == "resnet18"
    assert load_config(CONFIGS / "pretrain_pixcon.yaml").views.blur_prob == [1.0, 0.1]  # BYOL's asymmetric blur
    cfg = load_config(CONFIGS / "pretrain_densecl.yaml")
    assert cfg.views.blur_prob == [0.5, 0.5] and cfg.views.solarize_prob == [0.0, 0.0]  # MoCo-v2 augmentations
    assert cfg.densecl.momentum == 0.999 and cfg.densecl.momentum_schedule == "constant"
