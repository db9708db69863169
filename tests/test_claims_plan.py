"""The claims plan (Ray-free): every start's lr is searched on held-out training images, never on the judged val
images, and the judged runs take the lr that scored best."""

import pytest

from rayseg.claims.plan import BUDGETS, choose_lr, plan_claims
from rayseg.config import ConfigError, config_from_dict
from rayseg.data import HeldOutImages, build_segmentation_dataset


def test_the_held_out_images_are_a_fixed_part_of_the_training_split_and_evaluated_plainly():
    data = config_from_dict({"data": {"domain": "C", "num_train": 12, "holdout": 4, "image_size": 32,
                                      "crop_size": 24}}).data
    train, held_out = build_segmentation_dataset(data, train=True), build_segmentation_dataset(data, train=False)
    assert isinstance(held_out, HeldOutImages) and (len(train), len(held_out)) == (8, 4)
    assert sorted(train.indices + held_out.indices) == list(range(12))  # disjoint, and the whole split
    assert held_out.indices == build_segmentation_dataset(data, train=False).indices  # the same choice every time
    assert train[0]["image"].shape[-1] == 24 and held_out[0]["image"].shape[-1] == 32  # train crops; eval does not
    # the held-out images are training images (not val), seen without augmentation
    unaugmented = config_from_dict({"data": {"domain": "C", "num_train": 12, "image_size": 32, "crop_size": 32,
                                             "scale_min": 1.0, "scale_max": 1.0, "hflip": 0.0,
                                             "color_jitter": 0.0}}).data
    whole = build_segmentation_dataset(unaugmented, train=True)
    for k, i in enumerate(held_out.indices):
        assert (held_out[k]["mask"] == whole[i]["mask"]).all() and (held_out[k]["image"] == whole[i]["image"]).all()
    assert held_out.num_classes == whole.num_classes


def test_a_holdout_that_leaves_nothing_to_train_on_is_a_config_error():
    with pytest.raises(ConfigError, match="data.holdout"):
        config_from_dict({"data": {"num_train": 8, "holdout": 8}})
    with pytest.raises(ConfigError, match="data.holdout"):  # a folder dataset is only counted when read
        HeldOutImages(list(range(3)), 3, 0, held_out=True)


def test_choose_lr_takes_the_best_held_out_miou_and_the_smaller_lr_on_a_tie():
    assert choose_lr([{"lr": 0.01, "miou": 0.3}, {"lr": 0.1, "miou": 0.5}, {"lr": 0.3, "miou": 0.4}]) == 0.1
    assert choose_lr([{"lr": 0.3, "miou": 0.5}, {"lr": 0.1, "miou": 0.5}]) == 0.1


def test_every_judged_run_of_a_start_takes_its_lr_from_one_search_on_the_first_seeds(tmp_path):
    b = BUDGETS["full"]
    plan = plan_claims(str(tmp_path), b)
    (tmp_path / "w.pt").write_bytes(b"")  # the pre-trained weights a run starts from (checked to exist)
    judged = {s.name for s in plan.evaluate}
    for key, specs in plan.searches.items():
        start, evaluation = key.split()
        grid = b.probe_lrs if evaluation == "probe" else b.finetune_lrs
        configs = [s.build(str(tmp_path / "w.pt") if s.after else "") for s in specs]
        assert [c.optim.lr for c in configs] == list(grid) and not judged & {s.name for s in specs}
        for c in configs:
            assert c.data.holdout == b.holdout and c.run.seed == b.finetune_seeds[0]
            # as many optimizer steps as the judged runs (which train on every target image), to half an epoch
            epoch = (b.target_images - b.holdout) / c.train.batch_size
            judged_epochs = b.probe_epochs if evaluation == "probe" else b.finetune_epochs
            assert abs(c.train.epochs * epoch - judged_epochs * b.target_images / c.train.batch_size) <= epoch / 2
        # searched after the first pre-training seed; used by every seed after every pre-training seed
        assert specs[0].after == "" if start == "scratch" else specs[0].after.endswith(f"-p{b.pretrain_seeds[0]}")
        users = [u for u in plan.evaluate if u.search == tuple(s.name for s in specs)]
        assert {u.settings["run"]["tags"]["start"] for u in users} == {start}
        assert {u.name.split("-")[0] for u in users} == {evaluation}
        assert len(users) == len(b.finetune_seeds) * (1 if start == "scratch" else len(b.pretrain_seeds))
        assert all(u.build(str(tmp_path / "w.pt") if u.after else "", lr=0.123).optim.lr == 0.123 for u in users)
    assert {n for specs in plan.searches.values() for u in plan.evaluate if u.search for n in u.search} == {
        s.name for specs in plan.searches.values() for s in specs}
    ssa = [s for s in plan.evaluate if "-ssa-" in s.name]
    assert len(ssa) == 2 * len(b.finetune_seeds) and all(not s.search and s.build().optim.lr == b.ssa_lr for s in ssa)
    with pytest.raises(ValueError, match="pass lr"):
        next(s for s in plan.evaluate if s.search).build()
