"""Optional MLflow tracking (the ``mlflow`` section), through MLflow's own client, from rank 0 of the loop.

The default store is MLflow's file store under ``<run.storage>/mlruns`` (it needs no server or database; MLflow 3
keeps it in maintenance mode, so a team should point ``mlflow.tracking_uri`` at its tracking server). One MLflow
run per rayseg run folder. It is found again by its ``rayseg.run_dir`` tag, so a resumed run logs into
the run it started; its epochs continue the same metric histories (``step`` = global step).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from rayseg import storage
from rayseg.config import Config

ARTIFACTS = ("metrics.json", "confusion_matrix.png", "config.yaml", "tags.json", "summary.json")


def tracking_uri(cfg: Config) -> str:
    """``mlflow.tracking_uri``, or a local file store ``<run.storage>/mlruns``."""
    if cfg.mlflow.tracking_uri:
        return cfg.mlflow.tracking_uri
    return Path(storage.absolute(cfg.run.storage), "mlruns").as_uri()


class MlflowTracker:
    """Logs to the MLflow run of ``run_dir`` (created on first use); does nothing when ``cfg.mlflow.enabled`` is
    false."""

    def __init__(self, cfg: Config, run_dir: str, enabled: bool):
        self.client, self.run_id = None, None
        if not (enabled and cfg.mlflow.enabled):
            return
        uri = tracking_uri(cfg)
        if uri.startswith("file:"):  # MLflow 3 keeps its file store (maintenance mode) behind this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.mlflow.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(cfg.mlflow.experiment))
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`rayseg.run_dir` = '{run_dir}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = self.client.create_run(experiment_id, run_name=storage.basename(run_dir),
                                         tags={"rayseg.run_dir": run_dir})
            self.run_id = run.info.run_id

    def params(self, params: dict) -> None:
        if self.client is not None:
            logged = self.client.get_run(self.run_id).data.params
            for key, value in params.items():
                if key not in logged:  # MLflow params are write-once; a resumed run has them already
                    self.client.log_param(self.run_id, key, value)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is not None:
            for key, value in values.items():
                if value is not None and math.isfinite(value):
                    self.client.log_metric(self.run_id, key.replace(":", "_"), float(value), step=step)

    def finish(self, folder: str | os.PathLike) -> None:
        """Upload the run folder's result files as artifacts and mark the run finished."""
        if self.client is None:
            return
        for name in ARTIFACTS:
            if (Path(folder) / name).is_file():
                self.client.log_artifact(self.run_id, str(Path(folder) / name))
        self.client.set_terminated(self.run_id)
