"""`rayseg sweep`: a Ray Tune search over config keys, one Train V2 run per trial.

Each trial is a *driver function* (:func:`run_trial`, the Train V2 way to combine Tune and Train): it builds the
trial's config from the base config plus its sampled values and runs the shared engine
(:func:`rayseg.engine.runner.train`), which builds a fresh ``TorchTrainer``. ``TuneReportCallback`` forwards the
engine's per-epoch reports to Tune, each with ``epochs_done`` (the epochs the Train run has finished, also after a
resume from its checkpoint; Tune's own ``training_iteration`` restarts at 1 when a trial is restored), so ASHA can
stop a trial after any epoch.

Stopping trials. ASHA never stops a trial at ``max_t`` (``stop_last_trials=False``): a trial that survives every
rung ends on its own, so its ``TorchTrainer.fit`` returns and Train removes its workers' placement group before the
next trial starts (and ``summary.json`` gets its ``fit_seconds``). A trial that ASHA (or the end of the sweep)
stops early is terminated by Tune, which kills its Train controller before the controller can remove its placement
group (ray-project/ray#54305); :mod:`rayseg.tune.reaper` removes it, so the next trial does not wait for CPUs
that no one uses.

Objectives (space file ``objective``):

* ``loss``: the pre-training loss (``loss/loss`` of each epoch's report), minimised.
* ``miou``: maximised. With ``finetune.config``, each trial pre-trains, then fine-tunes from its export
  (``export/<method export_part>.pt``) with that config, evaluating every epoch; Tune sees the fine-tune's
  per-epoch mIoU. Without it the method must evaluate itself (``supervised``), every epoch.

Resources: a trial driver reserves no CPU (``with_resources(..., {"CPU": 0})``) and its Train workers reserve
``train.num_workers x train.cpus_per_worker`` CPUs (and GPUs). At most ``cluster CPUs // that`` trials (also
bounded by GPUs) run at once, so trials never wait on each other's workers (no deadlock on 2 CPUs). With
``train.num_workers: 0`` training runs inside the driver, which then reserves ``train.cpus_per_worker``. A space
that varies ``train.num_workers``, ``train.cpus_per_worker`` or ``train.use_gpu`` is sized by its largest trial,
and each trial's driver reserves what its own config needs.

Folders: the sweep is ``<run.storage>/sweep-<method>-<hash of config + space>`` (Tune's experiment folder) and
each trial's run folder ``<run.storage>/<sweep name>-<trial id>[-finetune]``. Re-running the same command
restores the Tuner from its folder: finished trials are kept, unfinished and errored ones resume from their
Train checkpoints. Outputs in the sweep folder: ``results.csv`` (one row per trial) and ``best_config.yaml``
(the base config with the best trial's values: ``rayseg pretrain --config best_config.yaml`` reruns it).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from rayseg import storage, tables
from rayseg.config import Config, ConfigError, config_from_dict, load_config, output_location, save_config, set_dotted
from rayseg.tune.space import SearchSpace

__all__ = ["EPOCHS", "driver_resources", "largest_trial", "max_concurrent_trials", "run_sweep", "run_trial",
           "sweep_name", "trial_config"]

#: the per-epoch report field ASHA counts in: epochs finished by the trial's Train run
EPOCHS = "epochs_done"


def sweep_name(cfg: Config, space: SearchSpace) -> str:
    blob = json.dumps({"config": cfg.to_dict(), "space": space.to_dict()}, sort_keys=True, default=str)
    return f"sweep-{cfg.method}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Config:
    """The base config (plain dict) with the trial's sampled ``{dotted key: value}`` applied, validated."""
    tree = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(tree, key, value)
    return config_from_dict(tree)


def trial_cpus_gpus(cfg: Config) -> tuple[float, float]:
    """CPUs and GPUs one trial holds while it trains (its driver plus its Train workers)."""
    t = cfg.train
    if t.num_workers == 0:
        return float(t.cpus_per_worker), 0.0
    return float(t.num_workers * t.cpus_per_worker), float(t.num_workers if t.use_gpu else 0)


#: keys that change what one trial holds; a space that varies them is sized by its largest trial
RESOURCE_KEYS = ("train.num_workers", "train.cpus_per_worker", "train.use_gpu")


def largest_trial(cfg: Config, space: SearchSpace | None = None) -> tuple[float, float]:
    """CPUs and GPUs of the largest trial of ``space`` over ``cfg``: every combination of the values (grid,
    choice) or bounds (uniform, loguniform) that the space gives the keys of :data:`RESOURCE_KEYS`."""
    varied = [p for p in (space.params if space else []) if p.key in RESOURCE_KEYS]
    if not varied:
        return trial_cpus_gpus(cfg)
    base = cfg.to_dict()
    combos = itertools.product(*[[(p.key, v) for v in p.candidates()] for p in varied])
    sizes = [trial_cpus_gpus(trial_config(base, dict(combo))) for combo in combos]
    return max(c for c, _ in sizes), max(g for _, g in sizes)


def max_concurrent_trials(cfg: Config, cluster: dict[str, float], space: SearchSpace | None = None) -> int:
    """How many trials fit in the cluster at once, counting each as the space's largest trial (so trials
    never wait on each other for resources); ``ConfigError`` when not even one does."""
    cpus, gpus = largest_trial(cfg, space)
    have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if cpus > have_cpu or gpus > have_gpu:
        raise ConfigError(f"train.num_workers x train.cpus_per_worker: a trial needs {cpus:g} CPUs and {gpus:g} GPUs, "
                          f"the cluster has {have_cpu:g} CPUs and {have_gpu:g} GPUs")
    fits = [math.floor(have_cpu / cpus) if cpus else math.inf, math.floor(have_gpu / gpus) if gpus else math.inf]
    return max(1, int(min(min(fits), 1024)))


def driver_resources(config: dict[str, Any]):
    """What a trial's driver reserves, from its own config: ``train.cpus_per_worker`` CPUs when training runs
    inside it (``train.num_workers: 0``), else nothing (it waits on its Train workers; Tune refuses an all-zero
    request, so 1 KiB of memory)."""
    from ray.tune import PlacementGroupFactory

    t = trial_config(config["base"], config.get("params", {})).train
    bundle = {"CPU": float(t.cpus_per_worker)} if t.num_workers == 0 else {"CPU": 0.0, "memory": 1024}
    return PlacementGroupFactory([bundle])


def _epoch_report_callback():
    """``TuneReportCallback`` that adds ``epochs_done`` (the engine's 0-based ``epoch`` + 1) to each report."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            metrics = [{**m, EPOCHS: m["epoch"] + 1} if "epoch" in m else m for m in metrics]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReport()


def run_trial(config: dict[str, Any], reaper=None) -> None:
    """Tune driver function of one trial (runs inside the trial's process on the cluster). ``reaper``: the
    sweep's :class:`~rayseg.tune.reaper.PlacementGroupReaper`, told about each Train run's placement group."""
    import ray.tune

    from rayseg.engine.runner import train
    from rayseg.methods import METHODS
    from rayseg.tune.reaper import train_callback

    cfg = trial_config(config["base"], config["params"])
    method = METHODS[cfg.method]
    trial_id = ray.tune.get_context().get_trial_id()
    cfg.run.name = f"{config['sweep']}-{trial_id}"  # deterministic: a restored trial resumes its Train run
    cleanup = []  # the Train controller registers its placement group with the reaper
    if reaper is not None and (callback := train_callback(reaper)) is not None:
        cleanup.append(callback)
    report = [_epoch_report_callback(), *cleanup]
    if config["objective"] == "loss":
        train(cfg, "pretrain", method, callbacks=report)
        return
    if not config["finetune_config"]:
        cfg.train.eval_every = 1  # the method's own mIoU after every epoch
        train(cfg, "pretrain", method, callbacks=report)
        return
    summary = train(cfg, "pretrain", method, callbacks=cleanup)
    weights = summary["export"][method.export_part]
    ft = load_config(config["finetune_config"], [*config["finetune_overrides"], f"model.init_weights={weights}",
                                                 "train.eval_every=1"])
    ft.run.storage, ft.run.name = cfg.run.storage, f"{cfg.run.name}-finetune"
    train(ft, "finetune", METHODS[ft.method], callbacks=report)


def _results_rows(results, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        row = {"trial_id": metrics.get("trial_id", Path(result.path).name if result.path else ""),
               **{p.key: (result.config or {}).get("params", {}).get(p.key) for p in space.params},
               space.metric: metrics.get(space.metric),
               "epochs_reported": metrics.get(EPOCHS, metrics.get("training_iteration", 0)),
               "status": "error" if result.error else "done"}
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], location: str) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(location, text.getvalue())


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)"
    columns = list(rows[0])
    return tables.format_table(columns, [[_fmt(r.get(c)) for c in columns] for r in rows])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def run_sweep(cfg: Config, space: SearchSpace, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns ``{"sweep_dir", "rows", "best_params", "best_metric", "best_config",
    "seconds"}``. Prints the results table."""
    from rayseg.engine.runner import ensure_ray
    from rayseg.tune.reaper import start_reaper, stop_reaper

    root = output_location(cfg.run.storage, "run.storage")  # refused before Ray starts when it cannot be used
    name = sweep_name(cfg, space)
    sweep_dir = storage.join(root, name)
    summary_file = storage.join(sweep_dir, "summary.json")  # written last, when every trial finished
    if storage.exists(summary_file):
        finished = json.loads(storage.read_text(summary_file))
        print(f"[rayseg] sweep {sweep_dir} is already complete; nothing to do", flush=True)
        print(format_table(finished["rows"]), flush=True)
        return finished
    ensure_ray(address)
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    concurrency = max_concurrent_trials(cfg, ray.cluster_resources(), space)
    ray_storage = storage.ray_storage(sweep_dir)
    restore_args = {"path": ray_storage["storage_path"], "storage_filesystem": ray_storage.get("storage_filesystem")}
    reaper = start_reaper()  # removes the Train placement groups of trials Tune stops (see rayseg.tune.reaper)
    trainable = tune.with_resources(tune.with_parameters(run_trial, reaper=reaper), driver_resources)
    param_space = {"base": cfg.to_dict(), "sweep": name, "objective": space.objective,
                   "finetune_config": str(Path(space.finetune_config).resolve()) if space.finetune_config else "",
                   "finetune_overrides": list(space.finetune_overrides), **space.param_space()}
    start = time.perf_counter()
    if tune.Tuner.can_restore(**restore_args):
        print(f"[rayseg] resuming sweep {sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(**restore_args, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if space.asha is not None:
            epochs = cfg.train.epochs
            if space.finetune_config:
                epochs = load_config(space.finetune_config, space.finetune_overrides).train.epochs
            # stop_last_trials=False: a trial that reaches max_t finishes by itself (see the module docstring)
            scheduler = ASHAScheduler(time_attr=EPOCHS, max_t=max(1, epochs), stop_last_trials=False,
                                      **space.asha)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=space.metric, mode=space.mode, num_samples=space.num_samples,
                                        max_concurrent_trials=concurrency, scheduler=scheduler),
            run_config=tune.RunConfig(name=name, **storage.ray_storage(root), verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    try:
        results = tuner.fit()
    finally:
        reaped = stop_reaper(reaper)  # every placement group of a stopped trial removed before returning
    seconds = time.perf_counter() - start
    if reaped["left"]:
        print(f"[rayseg] warning: {len(reaped['left'])} Train placement group(s) of stopped trials are still "
              f"reserved", flush=True)
    rows = _results_rows(results, space)
    _write_csv(rows, storage.join(sweep_dir, "results.csv"))
    print(format_table(rows), flush=True)
    out: dict[str, Any] = {"sweep_dir": sweep_dir, "rows": rows, "seconds": seconds, "concurrency": concurrency,
                           "reaped_placement_groups": len(reaped["removed"])}
    scored = [r for r in rows if isinstance(r[space.metric], (int, float)) and math.isfinite(r[space.metric])]
    if not scored:
        print(f"[rayseg] no trial reported {space.metric}; see {sweep_dir}", flush=True)
        return _finish(out, results, summary_file)
    best = results.get_best_result(metric=space.metric, mode=space.mode, scope="last", filter_nan_and_inf=True)
    best_params = dict(best.config["params"])
    best_cfg = trial_config(cfg.to_dict(), best_params)
    best_cfg.run.name = ""
    best_file = storage.join(sweep_dir, "best_config.yaml")
    save_config(best_cfg, best_file)
    out.update(best_params=best_params, best_metric=best.metrics[space.metric], best_config=best_file)
    values = ", ".join(f"{k}={v}" for k, v in best_params.items())
    print(f"[rayseg] best {space.metric} {best.metrics[space.metric]:.4g} with {values} -> "
          f"{best_file}", flush=True)
    return _finish(out, results, summary_file)


def _finish(out: dict[str, Any], results, summary_file: str) -> dict[str, Any]:
    """Write ``summary.json`` (the sweep's result; a re-run then returns it without Ray) unless a trial failed:
    a re-run retries those."""
    if not results.errors:
        storage.write_text(summary_file, json.dumps(out, indent=1, default=str))
    return out
