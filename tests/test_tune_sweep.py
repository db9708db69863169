"""Real Ray Tune sweeps on the session's local cluster (4 logical CPUs): a 2-trial sweep, ASHA stopping a bad
trial (and its Train placement group freed), and an interrupted sweep resumed by re-running the same command."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import yaml

from rayseg.config import load_config
from tests.engine_helpers import kill_after_first_checkpoint, run_cli


TINY = {"data.num_train": 16, "data.num_val": 8, "data.image_size": 32, "data.crop_size": 32,
        "model.channels": 16, "model.output_stride": 16, "train.batch_size": 4, "train.log_every": 2,
        "run.seed": 3}  # 4 steps per epoch, one Train worker per trial


def overrides(storage: Path, **extra) -> list[str]:
    return [f"{k}={v}" for k, v in {**TINY, "run.storage": str(storage), **extra}.items()]


def write_space(path: Path, lrs: list[float], asha: dict | None) -> Path:
    path.write_text(yaml.safe_dump({"objective": "loss", "asha": asha, "params": {"optim.lr": {"grid": lrs}}}))
    return path


def read_rows(sweep_dir: Path) -> dict[float, dict]:
    with open(sweep_dir / "results.csv") as f:
        return {float(row["optim.lr"]): row for row in csv.DictReader(f)}


def run_dir(sweep_dir: Path, row: dict) -> Path:
    return sweep_dir.parent / f"{sweep_dir.name}-{row['trial_id']}"


def checkpoint_epochs(train_run: Path) -> list[int]:
    """Epochs of every checkpoint Ray Train recorded for a run (all kept: train.keep_checkpoints is large)."""
    snapshot = json.loads((train_run / "checkpoint_manager_snapshot.json").read_text())
    return [r["metrics"]["epoch"] for r in snapshot["checkpoint_results"]]


def read_checkpoint_epochs(train_run: Path) -> list[int] | None:
    """``checkpoint_epochs`` while the run may be writing its snapshot: None if there is none (yet)."""
    try:
        return checkpoint_epochs(train_run)
    except (OSError, ValueError):
        return None


def settled_checkpoint_epochs(train_run: Path, quiet_s: float = 3.0, timeout: float = 30.0) -> list[int]:
    """Checkpoint epochs of a run once its snapshot has not changed for ``quiet_s`` seconds."""
    deadline, last, since = time.time() + timeout, None, time.time()
    while time.time() < deadline:
        now = read_checkpoint_epochs(train_run)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= quiet_s:
            break
        time.sleep(0.2)
    return last


def assert_all_cpus_free(timeout: float = 30.0) -> None:
    """Every CPU of the cluster is available again: no Train placement group was left reserved."""
    import ray
    from ray.util import placement_group_table

    deadline = time.time() + timeout
    while True:
        total, free = ray.cluster_resources().get("CPU"), ray.available_resources().get("CPU", 0.0)
        if free == total:
            return
        if time.time() > deadline:
            live = {k: v["bundles"] for k, v in placement_group_table().items() if v["state"] != "REMOVED"}
            raise AssertionError(f"{free} of {total} CPUs free; placement groups left: {live}")
        time.sleep(0.5)


def test_two_trial_sweep_completes_with_results_and_best_config(ray_cluster, tmp_path):
    from rayseg.tune.space import load_space
    from rayseg.tune.sweep import run_sweep

    # 2 CPUs per trial on 4: both trials run at once
    cfg = load_config(None, overrides(tmp_path / "runs", **{"train.epochs": 2, "train.cpus_per_worker": 2}))
    space = load_space(write_space(tmp_path / "space.yaml", [0.1, 0.02], asha=None), cfg)
    out = run_sweep(cfg, space)
    assert out["concurrency"] == 2

    sweep_dir = Path(out["sweep_dir"])
    rows = read_rows(sweep_dir)
    assert sorted(rows) == [0.02, 0.1]
    for row in rows.values():
        assert row["status"] == "done" and int(row["epochs_reported"]) == 2
        summary = json.loads((run_dir(sweep_dir, row) / "summary.json").read_text())
        # the metric is the trial's last reported training loss, and the trial finished by itself: its
        # TorchTrainer.fit returned (fit_seconds is written after it), it was not killed after its last report
        assert float(row["loss/loss"]) == pytest.approx(summary["final_losses"]["loss"], rel=1e-6)
        assert summary["steps"] == 2 * 4 and summary["fit_seconds"] > 0

    best_lr = min(rows, key=lambda lr: float(rows[lr]["loss/loss"]))
    assert out["best_params"] == {"optim.lr": best_lr}
    assert out["best_metric"] == pytest.approx(float(rows[best_lr]["loss/loss"]), rel=1e-6)
    best = load_config(sweep_dir / "best_config.yaml")
    assert best.optim.lr == best_lr
    assert (best.data.num_train, best.train.epochs, best.model.channels, best.run.name) == (16, 2, 16, "")
    assert_all_cpus_free()

    import rayseg.engine.runner as runner  # a finished sweep re-run returns its summary without Ray
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "ensure_ray", lambda *a, **k: pytest.fail("a finished sweep started Ray"))
        again = run_sweep(cfg, space)
    assert (again["best_params"], again["best_metric"]) == (out["best_params"], pytest.approx(out["best_metric"]))


def test_asha_stops_the_bad_trial_and_frees_its_workers(ray_cluster, tmp_path):
    from rayseg.tune.space import load_space
    from rayseg.tune.sweep import run_sweep

    # 3 CPUs per trial on 4: one trial at a time, in grid order. The good lr (0.1) drops the loss from ~1.9 to
    # ~1.35 in the first epoch (4 steps); at 1e-7 it stays ~1.9, so at ASHA's first rung (1 epoch, reduction
    # factor 2) the bad trial is below the median of the rung and is stopped; the good one runs all 3 epochs.
    cfg = load_config(None, overrides(tmp_path / "runs", **{"train.epochs": 3, "train.cpus_per_worker": 3}))
    space = load_space(write_space(tmp_path / "space.yaml", [0.1, 1.0e-7],
                                   asha={"grace_period": 1, "reduction_factor": 2}), cfg)
    out = run_sweep(cfg, space)
    assert out["concurrency"] == 1

    sweep_dir = Path(out["sweep_dir"])
    rows = read_rows(sweep_dir)
    good, bad = rows[0.1], rows[1.0e-7]
    assert int(good["epochs_reported"]) == 3 and int(bad["epochs_reported"]) == 1
    assert float(good["loss/loss"]) < float(bad["loss/loss"]) - 0.3
    assert checkpoint_epochs(run_dir(sweep_dir, bad)) == [0]
    assert not (run_dir(sweep_dir, bad) / "summary.json").exists()  # stopped: never reached its outputs
    assert json.loads((run_dir(sweep_dir, good) / "summary.json").read_text())["fit_seconds"] > 0
    assert out["best_params"] == {"optim.lr": 0.1}
    # Tune killed the bad trial's Train controller before it could remove its placement group
    # (ray-project/ray#54305); the sweep's reaper saw the controller die and removed the group.
    assert out["reaped_placement_groups"] >= 1
    assert_all_cpus_free()


def test_interrupted_sweep_resumes_when_the_command_is_rerun(ray_cluster, tmp_path):
    storage = tmp_path / "runs"
    space = write_space(tmp_path / "space.yaml", [0.1, 0.05], asha=None)
    # both trials at once; every checkpoint kept, so the epochs each trial trained can be counted afterwards
    args = ["sweep", "--address", ray_cluster, "--space", str(space),
            *overrides(storage, **{"train.epochs": 3, "train.cpus_per_worker": 2, "train.keep_checkpoints": 10})]

    def first_trial_checkpointed(_storage: Path) -> int | None:
        runs = sorted(_storage.glob("sweep-*-*_00000"))
        epochs = read_checkpoint_epochs(runs[0]) if runs else None
        return epochs[0] if epochs else None

    kill_after_first_checkpoint(args, storage, first_trial_checkpointed)
    sweep_dir = next(p for p in storage.iterdir() if p.is_dir() and "_" not in p.name)  # trial runs: <sweep>-<id>
    first = next(storage.glob("sweep-*-*_00000"))
    done = settled_checkpoint_epochs(first)  # the killed sweep's workers may finish a step or two before dying
    assert not (sweep_dir / "results.csv").exists()
    assert len(done) < 3, f"the first trial finished ({done}) before the sweep was killed"

    r = run_cli(args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"[rayseg] resuming sweep {sweep_dir}" in r.stdout
    rows = read_rows(sweep_dir)
    assert sorted(rows) == [0.05, 0.1]
    for row in rows.values():
        # epochs_reported counts the Train run's epochs, also those done before the interruption
        assert row["status"] == "done" and int(row["epochs_reported"]) == 3
        train_run = run_dir(sweep_dir, row)
        # every epoch trained and checkpointed exactly once: the interrupted trial resumed from its checkpoint
        # instead of training again from scratch (which would record epoch 0 twice)
        assert checkpoint_epochs(train_run) == [0, 1, 2]
        assert json.loads((train_run / "summary.json").read_text())["steps"] == 3 * 4
    assert first.name.endswith(rows[0.1]["trial_id"])  # the same trial (id kept by Tune's restore)
    assert f"resuming after epoch {len(done)} (step {4 * len(done)})" in r.stdout  # the first trial's worker
    assert_all_cpus_free()


def test_sweep_on_an_object_store_writes_there_and_resumes(ray_cluster, tmp_path, s3_uri, capsys):
    from rayseg import storage
    from rayseg.tune.space import load_space
    from rayseg.tune.sweep import run_sweep

    cfg = load_config(None, [*overrides(tmp_path, **{"train.epochs": 1, "train.cpus_per_worker": 2,
                                                       "model.backbone": "mobilenet_v3_large"}),
                             f"run.storage={s3_uri}"])
    space = load_space(write_space(tmp_path / "space.yaml", [0.1, 0.02], asha=None), cfg)
    out = run_sweep(cfg, space)
    sweep_dir = out["sweep_dir"]
    assert sweep_dir == storage.join(s3_uri, storage.basename(sweep_dir))
    rows = {float(r["optim.lr"]): r for r in csv.DictReader(storage.read_text(storage.join(sweep_dir, "results.csv"))
                                                            .splitlines())}
    assert sorted(rows) == [0.02, 0.1] and {r["status"] for r in rows.values()} == {"done"}
    for row in rows.values():  # each trial's Train run folder, on the store
        run = storage.join(s3_uri, f"{storage.basename(sweep_dir)}-{row['trial_id']}")
        assert json.loads(storage.read_text(storage.join(run, "summary.json")))["steps"] == 4
    assert out["best_config"] == storage.join(sweep_dir, "best_config.yaml")
    assert yaml.safe_load(storage.read_text(out["best_config"]))["optim"]["lr"] == out["best_params"]["optim.lr"]
    assert not any(tmp_path.glob("sweep-*"))  # nothing went to a local folder instead
    capsys.readouterr()

    again = run_sweep(cfg, space)  # the same command again: the finished sweep's summary, read from the store
    assert f"[rayseg] sweep {sweep_dir} is already complete; nothing to do" in capsys.readouterr().out
    assert again["best_params"] == out["best_params"]
    storage.delete(storage.join(sweep_dir, "summary.json"))  # as if killed before the end: Tune restores it
    again = run_sweep(cfg, space)
    assert f"[rayseg] resuming sweep {sweep_dir}" in capsys.readouterr().out
    assert again["best_params"] == out["best_params"]
    assert_all_cpus_free()
