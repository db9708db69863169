"""Optional MLflow tracking, read back through MLflow's client from a local file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayseg.config import ConfigError, load_config
from rayseg.engine.runner import train
from rayseg.engine.tracking import tracking_uri
from rayseg.methods import METHODS
from tests.engine_helpers import tiny_overrides


def test_a_run_logs_params_metrics_and_artifacts_and_a_resume_continues_it(tmp_path):
    pytest.importorskip("mlflow")
    overrides = tiny_overrides(tmp_path, "tracked", **{"train.epochs": 2, "train.eval_every": 1,
                                                         "mlflow.enabled": "true", "mlflow.experiment": "tests",
                                                         "run.tags": "{start: x}"})
    cfg = load_config(None, overrides)
    summary = train(cfg, "finetune", METHODS[cfg.method])
    from mlflow.tracking import MlflowClient  # after the run has allowed the file store

    client = MlflowClient(tracking_uri(cfg))
    assert tracking_uri(cfg) == (tmp_path / "mlruns").as_uri()  # the default: beside the runs
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["optim.lr"] == "0.02" and run.data.params["tag.start"] == "x"
    history = client.get_metric_history(run.info.run_id, "val/miou")
    assert [m.step for m in history] == [8, 16] and history[-1].value == pytest.approx(summary["miou"])
    assert len(client.get_metric_history(run.info.run_id, "loss/loss")) == 16 // 2  # 16 steps, a line every 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "confusion_matrix.png", "config.yaml", "tags.json", "summary.json"} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "dl")))
    assert json.loads(local.read_text())["miou"] == pytest.approx(summary["miou"])

    cfg = load_config(None, [*overrides, "train.epochs=3"])  # the same run folder, one more epoch
    train(cfg, "finetune", METHODS[cfg.method])
    (again,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert again.info.run_id == run.info.run_id  # the resumed run continued its MLflow run
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/miou")] == [8, 16, 24]


def test_mlflow_enabled_without_mlflow_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^mlflow.enabled: true, but MLflow is not installed"):
        load_config(None, tiny_overrides(tmp_path, "x", **{"mlflow.enabled": "true"}))
