"""DenseCL's heads as published (MoCo-v2's MLP: no BatchNorm, a key keeps the BN variant) and train.sync_bn."""

from __future__ import annotations

import pytest
from torch import nn

from rayseg.config import ConfigError, load_config
from rayseg.methods import METHODS


def _densecl(*overrides: str):
    cfg = load_config(None, ["method=densecl", "densecl.queue_size=16", "densecl.proj_hidden_dim=32",
                             "densecl.proj_dim=8", "model.channels=16", *overrides])
    method_cls = METHODS["densecl"]
    return method_cls.from_config(cfg, method_cls.train_dataset(cfg))


def _norms(module: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


def test_densecl_heads_have_no_batchnorm_by_default_and_the_key_restores_it():
    plain = _densecl()
    for head in (plain.online.global_head, plain.online.dense_head):
        assert _norms(head, nn.modules.batchnorm._BatchNorm) == 0
        assert [type(m) for m in head][:2] in ([nn.Linear, nn.ReLU], [nn.Conv2d, nn.ReLU])
        assert head[0].bias is not None  # no BN to absorb the bias
    with_bn = _densecl("densecl.head_batch_norm=true")
    assert _norms(with_bn.online.global_head, nn.BatchNorm1d) == 1
    assert _norms(with_bn.online.dense_head, nn.BatchNorm2d) == 1


def test_sync_bn_converts_every_batchnorm_including_the_momentum_target():
    method = _densecl("densecl.head_batch_norm=true")
    before = _norms(method, nn.modules.batchnorm._BatchNorm)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # what the engine does with train.sync_bn
    assert before > 0 and _norms(converted, nn.SyncBatchNorm) == before
    assert _norms(converted.target, nn.SyncBatchNorm) > 0


def test_sync_bn_needs_gpu_workers():
    with pytest.raises(ConfigError, match=r"train.sync_bn: needs train.use_gpu: true"):
        load_config(None, ["train.sync_bn=true"])
    assert load_config(None, ["train.sync_bn=true", "train.use_gpu=true"]).train.sync_bn
