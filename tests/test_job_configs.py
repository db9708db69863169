"""Every shipped config parses and validates (paths that only exist on a real machine are overridden)."""

from pathlib import Path

import pytest
import yaml

from rayseg.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


def _dotted(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_is_valid_and_keeps_every_value_it_sets(path, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    text = path.read_text()
    overrides = {}
    if "kind: voc" in text:
        overrides["data.root"] = str(tmp_path)
    if "init_weights: rayseg_runs" in text:
        overrides["model.init_weights"] = str(weights)
    loaded = load_config(path, [f"{k}={v}" for k, v in overrides.items()]).to_dict()
    for key, value in _dotted(yaml.safe_load(text)):
        node = loaded
        for part in key.split("."):
            node = node[part]
        assert node == overrides.get(key, value), key


def test_the_shipped_configs():
    assert [p.name for p in CONFIGS] == [
        "finetune_synthetic.yaml", "finetune_voc.yaml", "label.yaml", "pretrain_densecl.yaml", "pretrain_mdp.yaml",
        "pretrain_pixcon.yaml", "pretrain_supervised.yaml"]


CLUSTER = Path(__file__).resolve().parents[1] / "jobs" / "cluster"


def test_autoscaler_yaml_keeps_work_off_the_head_and_scales_gpus_from_zero():
    cluster = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["min_workers"] == 0 < types["gpu_worker"]["max_workers"]


def test_rayjob_entrypoint_runs_a_shipped_job_with_a_valid_config(tmp_path):
    import shlex

    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    root = CLUSTER.parents[1]
    assert argv[0] == "python" and (root / argv[1]).is_file()
    config = root / argv[argv.index("--config") + 1]
    overrides = argv[argv.index("--config") + 2:]
    cluster_only = ("pssl.labels", "pssl.images")  # folders on the cluster's shared filesystem
    assert {a.split("=", 1)[0] for a in overrides} >= set(cluster_only)
    for key in cluster_only:
        (tmp_path / key).mkdir()
    overrides = [f"{a.split('=', 1)[0]}={tmp_path / a.split('=', 1)[0]}" if a.startswith(cluster_only) else a
                 for a in overrides]
    cfg = load_config(config, overrides)
    assert cfg.method == "pssl" and cfg.train.use_gpu and cfg.train.num_workers == 8
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
