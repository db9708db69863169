"""The demo's configs: every run validates, run folders are distinct, budgets are equal across starts."""

import pytest

from rayseg.commands import demo


@pytest.mark.parametrize("budget", [demo.QUICK, demo.FULL], ids=["quick", "full"])
def test_every_demo_run_config_is_valid_and_distinct(tmp_path, budget):
    storage = str(tmp_path)
    pre = demo.pretrain_configs(storage, budget)
    assert set(pre) == set(demo.STARTS) - {"scratch", "PSSL"}
    assert {c.method for c in pre.values()} == {"supervised", "mdp", "pixcon", "densecl"}
    # the same model and the same number of source images and epochs for every pre-training
    for cfg in pre.values():
        assert cfg.model.backbone == "resnet18" and cfg.model.output_stride == 16
        assert cfg.train.epochs == budget.pretrain_epochs
    assert pre["MDP-A+B"].data.num_train * 2 == pre["MDP-A"].data.num_train == budget.source_images
    assert pre["MDP-A+B"].mdp.datasets == ["synthetic:A", "synthetic:B"] and pre["MDP-A"].mdp.datasets == ["synthetic:A"]
    assert pre["PixCon-SR"].pixcon.variant == "sr"
    fine = [demo.finetune_config(storage, budget, s, h, seed) for s in demo.STARTS for h in demo.HEADS
            for seed in budget.seeds]
    assert len({c.run_dir("finetune") for c in fine}) == len(fine)
    assert {c.model.classifier for c in fine} == {"linear", "ssa"}
    assert {c.run.seed for c in fine} == set(budget.seeds)
    assert all(c.data.domain == "C" and c.train.epochs == budget.finetune_epochs for c in fine)
    assert len(budget.ensemble) >= 2
    assert len(set(c.run_dir("pretrain") for c in pre.values())) == len(pre)
