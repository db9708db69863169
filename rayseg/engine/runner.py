"""Driver side of training: starts or joins Ray and runs the worker loop with a ``TorchTrainer``.

The run folder ``<storage>/<name>`` is both Ray Train's ``storage_path/name`` (its checkpoints and state) and
the place of rayseg's outputs (config.yaml, TensorBoard, export/, metrics.json, summary.json). ``run.storage``
may be an object-store URI: Ray Train then gets its pyarrow filesystem, and the loop publishes its outputs
through :class:`rayseg.engine.run_folder.RunFolder`. Because the name is deterministic, re-running the same
command resumes the run from its last checkpoint, also after the driver was killed; re-running a finished run does
no work.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from rayseg import storage
from rayseg.config import Config, ConfigError, in_ray_job, save_config

if TYPE_CHECKING:  # the engine is handed its method; it imports no method module
    from rayseg.methods.base import Method


ADDRESS_KEY = "--address (or RAY_ADDRESS)"  # the option an error about the cluster's address names


def ensure_ray(address: str | None = None, dashboard: bool = True) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a fresh local cluster; no-op when Ray is up.

    A local cluster needs no network interface, so it is bound to 127.0.0.1. Ray reads that choice when it is
    first imported, so this must run before anything imports ray (``train`` calls it first). Its dashboard (on
    127.0.0.1) is on when ``dashboard`` is true (a command that runs no Ray Train passes False: it saves seconds of
    start-up and ~10% of a 2-core machine); ``RAYSEG_DASHBOARD=0`` or ``1`` overrides either.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    # Ray Train V2's placement-group cleaner (an actor) reads the state API of "the" local cluster; with several
    # clusters on one host it cannot tell which. The job's workers are told the address instead.
    if address is None:
        # The cleaner's state API is served by the dashboard (its agents cost ~10% of a 2-core machine).
        dashboard = {"0": False, "1": True}.get(os.environ.get("RAYSEG_DASHBOARD", ""), dashboard)
        port = _free_port()
        state_api = {"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}}
        ray.init(address="local", logging_level=logging.WARNING, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", dashboard_port=port, runtime_env=state_api if dashboard else None)
    else:
        check_address(address)
        # (inside `ray job submit` the job's own runtime_env, with its working_dir, must stay as it is)
        env = {"RAY_ADDRESS": address} if address != "auto" and not in_ray_job() else {}
        try:
            ray.init(address=address, logging_level=logging.WARNING, runtime_env={"env_vars": env} if env else None)
        except ConnectionError as exc:  # Ray's words name no cause; the usual one is the token a driver must bring
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster from `ray start` requires token authentication by default (Ray >= 2.59): set "
                "RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                "RAY_AUTH_TOKEN; `ray get-auth-token` on the head prints it)")
            raise ConfigError(f"{str(exc).splitlines()[0]}{hint}", ADDRESS_KEY) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, on an address no Ray cluster answers at (``ray.init`` would retry for a
    minute and then print a traceback). ``auto`` and ``ray://`` client addresses are left to Ray."""
    if address == "auto" or address.startswith("ray://"):
        return
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"{address} is a dashboard (job submission) address; join the cluster at its GCS "
                          f"address HOST:PORT (`ray start --head` prints it; default port 6379), or leave "
                          f"--address out inside `ray job submit`", ADDRESS_KEY)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{address!r} is not HOST:PORT", ADDRESS_KEY)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address} ({e.strerror or e}); check the head node's address "
                          f"and port (`ray status` on the head prints it)", ADDRESS_KEY) from None


def train(cfg: Config, command: str, method: type[Method], address: str | None = None,
          callbacks: list | None = None) -> dict:
    """Run (or resume) the training described by ``cfg`` with the objective ``method`` (the class the caller
    chose for ``cfg.method``); returns the run's summary.json contents, to which ``fit_seconds`` (wall time of
    this call's ``TorchTrainer.fit``) is added. ``callbacks``: Ray Train run callbacks (a Tune trial passes
    ``TuneReportCallback``). A finished run (its ``summary.json`` is written last) returns that summary at once,
    without starting Ray; a Tune trial always goes through Ray Train, which reports its result to Tune."""
    run_dir = cfg.run_dir(command)
    summary_file = storage.join(run_dir, "summary.json")
    if not callbacks and storage.exists(summary_file):
        finished = json.loads(storage.read_text(summary_file))
        if finished.get("epochs") == cfg.train.epochs:  # a fixed run.name with more epochs goes on training
            print(f"[rayseg] {run_dir} is already complete ({cfg.train.epochs} epochs); nothing to do", flush=True)
            return finished
    try:  # before Ray starts: an output that cannot be written (read-only, a file in the way, no space) is one line
        save_config(cfg, storage.join(run_dir, "config.yaml"))
        storage.write_text(storage.join(run_dir, "tags.json"), json.dumps(cfg.tags(command), indent=1))
    except OSError as e:
        raise ConfigError(f"cannot write the run folder {run_dir} ({e.strerror or e})", "run.storage") from None
    if cfg.train.num_workers > 0:
        ensure_ray(address)
    import ray.train
    from ray.train.torch import TorchTrainer

    from rayseg.engine.loop import train_loop_per_worker

    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg, "method": method, "run_dir": run_dir, "command": command},
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=storage.basename(run_dir), **storage.ray_storage(storage.parent(run_dir)),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            callbacks=list(callbacks or [])),
    )
    start = time.perf_counter()
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    summary = json.loads(storage.read_text(summary_file))
    summary["fit_seconds"] = round(time.perf_counter() - start, 3)
    storage.write_text(summary_file, json.dumps(summary, indent=2))
    return summary

