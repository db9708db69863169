"""Every shipped config parses and validates (paths that only exist on a real machine are overridden)."""

from pathlib import Path

import pytest

from rayseg.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_is_valid(path, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    text = path.read_text()
    overrides = []
    if "kind: voc" in text:
        overrides.append(f"data.root={tmp_path}")
    if "init_weights: rayseg_runs" in text:
        overrides.append(f"model.init_weights={weights}")
    cfg = load_config(path, overrides)
    assert cfg.train.epochs >= 1


def test_there_are_configs():
    assert len(CONFIGS) >= 3


CLUSTER = Path(__file__).resolve().parents[1] / "jobs" / "cluster"


def test_autoscaler_yaml_keeps_work_off_the_head_and_scales_gpus_from_zero():
    import yaml

    cluster = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["min_workers"] == 0 < types["gpu_worker"]["max_workers"]


def test_rayjob_entrypoint_runs_a_shipped_job_with_a_valid_config():
    import shlex

    import yaml

    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    root = CLUSTER.parents[1]
    assert argv[0] == "python" and (root / argv[1]).is_file()
    config = root / argv[argv.index("--config") + 1]
    overrides = [a for a in argv[argv.index("--config") + 2:] if not a.startswith(("pssl.labels=", "pssl.images="))]
    cfg = load_config(config, overrides)
    assert cfg.method == "pssl" and cfg.train.use_gpu and cfg.train.num_workers == 8
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
