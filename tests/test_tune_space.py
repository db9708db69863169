"""Search-space files: parsing, Tune distributions and one-line errors, all before Ray starts."""

from pathlib import Path

import pytest
import yaml

from rayseg.config import ConfigError, load_config
from rayseg.tune.space import load_space
from rayseg.tune.sweep import driver_resources, max_concurrent_trials, sweep_name, trial_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, data) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def pssl_inputs(tmp_path) -> list[str]:
    """``method=pssl`` with the inputs it requires (empty folders: only the config is checked here)."""
    (tmp_path / "labels").mkdir(exist_ok=True)
    (tmp_path / "images").mkdir(exist_ok=True)
    return ["method=pssl", f"pssl.labels={tmp_path / 'labels'}", f"pssl.images={tmp_path / 'images'}",
            "pssl.num_classes=3"]


def test_shipped_spaces_load_against_their_configs(tmp_path):
    shipped = {"pssl_bg_weight.yaml": load_config(None, pssl_inputs(tmp_path)),
               "mdp_temperature_topk.yaml": load_config(ROOT / "jobs/configs/pretrain_mdp.yaml"),
               "pixcon_temperature.yaml": load_config(ROOT / "jobs/configs/pretrain_pixcon.yaml")}
    for name, cfg in shipped.items():
        space = load_space(ROOT / "tune_spaces" / name, cfg)
        assert space.params
    bg = load_space(ROOT / "tune_spaces/pssl_bg_weight.yaml", shipped["pssl_bg_weight.yaml"])
    assert bg.params[0].key == "pssl.bg_weight" and bg.params[0].values == [0.001, 0.01, 0.1, 1.0]  # PSSL Table 1
    assert (bg.metric, bg.mode) == ("miou", "max")


def test_distributions_become_tune_domains(tmp_path):
    from ray import tune

    path = write(tmp_path, {"params": {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "train.batch_size": {"choice": [8, 16]},
                                       "optim.momentum": {"uniform": [0.8, 0.95]}, "optim.name": {"grid": ["sgd", "adamw"]}}})
    space = load_space(path, load_config())
    assert (space.metric, space.mode, space.num_samples) == ("loss/loss", "min", 1)
    assert space.asha == {"grace_period": 1, "reduction_factor": 2}
    params = space.param_space()["params"]
    assert params["optim.name"] == {"grid_search": ["sgd", "adamw"]}
    assert isinstance(params["optim.lr"], tune.search.sample.Float)
    assert params["optim.lr"].lower == 1e-3 and params["optim.lr"].upper == 1e-1
    assert isinstance(params["optim.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(params["train.batch_size"], tune.search.sample.Categorical)
    assert params["train.batch_size"].categories == [8, 16]


@pytest.mark.parametrize("data, message", [
    ({"params": {"optim.lrr": {"grid": [0.1]}}}, "params.optim.lrr = 0.1: unknown key"),
    ({"params": {"optim.name": {"grid": ["sgd", "lamb"]}}}, "params.optim.name = 'lamb'"),
    ({"params": {"optim.lr": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
    ({"params": {"optim.lr": {"uniform": [0.1]}}}, "expected [low, high]"),
    ({"params": {"optim.lr": {"uniform": [0.1, 0.01]}}}, "need low < high"),
    ({"params": {"optim.lr": {"loguniform": [0, 0.1]}}}, "bounds must be > 0"),
    ({"params": {"optim.lr": {"grid": []}}}, "expected a non-empty list"),
    ({"params": {"optim.name": {"uniform": [0, 1]}}}, "optim.name"),
    ({"params": {}}, "params: expected a mapping"),
    ({"objective": "accuracy", "params": {"optim.lr": {"grid": [0.1]}}}, "objective: 'accuracy'"),
    ({"num_samples": 0, "params": {"optim.lr": {"grid": [0.1]}}}, "num_samples"),
    ({"asha": {"grace_period": 0}, "params": {"optim.lr": {"grid": [0.1]}}}, "asha"),
    ({"searcher": "optuna", "params": {"optim.lr": {"grid": [0.1]}}}, "unknown key 'searcher'"),
    ({"finetune": {"config": "nope.yaml"}, "params": {"optim.lr": {"grid": [0.1]}}}, "finetune.config: file not found"),
])
def test_space_errors_are_one_line_naming_file_and_key(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_space(path, load_config())
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_trial_config_applies_sampled_values_and_names_are_deterministic(tmp_path):
    base = load_config(None, pssl_inputs(tmp_path))
    cfg = trial_config(base.to_dict(), {"pssl.bg_weight": 0.01, "optim.lr": 0.2})
    assert cfg.pssl.bg_weight == 0.01 and cfg.optim.lr == 0.2 and base.pssl.bg_weight == 0.1
    space = load_space(ROOT / "tune_spaces/pssl_bg_weight.yaml", base)
    assert sweep_name(base, space) == sweep_name(load_config(None, pssl_inputs(tmp_path)), space)
    assert sweep_name(base, space) != sweep_name(load_config(None, [*pssl_inputs(tmp_path), "optim.lr=0.5"]), space)


def test_concurrency_follows_cluster_resources():
    one_worker_two_cpus = load_config(None, ["train.num_workers=1", "train.cpus_per_worker=2"])
    assert max_concurrent_trials(one_worker_two_cpus, {"CPU": 2.0}) == 1
    assert max_concurrent_trials(one_worker_two_cpus, {"CPU": 9.0}) == 4
    gpu = load_config(None, ["train.num_workers=2", "train.use_gpu=true", "train.cpus_per_worker=4"])
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2   # GPUs bind first
    with pytest.raises(ConfigError, match="a trial needs 4 CPUs"):
        max_concurrent_trials(load_config(None, ["train.num_workers=2", "train.cpus_per_worker=2"]), {"CPU": 2.0})
    local = load_config(None, ["train.num_workers=0", "train.cpus_per_worker=1"])
    assert max_concurrent_trials(local, {"CPU": 2.0}) == 2


def test_a_space_that_varies_trial_resources_is_sized_by_its_largest_trial(tmp_path):
    base = load_config(None, ["train.num_workers=0", "train.cpus_per_worker=1"])
    space = load_space(write(tmp_path, {"params": {"train.cpus_per_worker": {"choice": [1, 2]},
                                                   "optim.lr": {"loguniform": [0.001, 0.1]}}}), base)
    assert max_concurrent_trials(base, {"CPU": 4.0}) == 4
    assert max_concurrent_trials(base, {"CPU": 4.0}, space) == 2  # a 2-CPU trial may come up
    workers = load_space(write(tmp_path, {"params": {"train.num_workers": {"grid": [0, 1, 3]}}}), base)
    assert max_concurrent_trials(base, {"CPU": 7.0}, workers) == 2  # 3 workers x 1 CPU
    with pytest.raises(ConfigError, match="a trial needs 3 CPUs"):
        max_concurrent_trials(base, {"CPU": 2.0}, workers)
    # each trial's driver reserves what its own config needs
    tree = base.to_dict()
    local = driver_resources({"base": tree, "params": {"train.cpus_per_worker": 2}})
    remote = driver_resources({"base": tree, "params": {"train.num_workers": 2}})
    assert local.bundles == [{"CPU": 2.0}] and remote.bundles == [{"memory": 1024.0}]  # Tune drops zeros


def test_a_missing_space_file_lists_the_shipped_ones(tmp_path):
    from rayseg.tune.space import load_space

    with pytest.raises(ConfigError, match=r"^--space: search space not found: nope.yaml \(shipped: "
                                          r"tune_spaces/mdp_temperature_topk.yaml, tune_spaces/pixcon"):
        load_space("nope.yaml", load_config(None, []))
