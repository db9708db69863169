"""Real Ray: a 2-worker gloo run interrupted and resumed, and `ray job submit` to a real head node."""

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from rayseg.config import load_config
from rayseg.engine.loop import evaluate
from rayseg.engine.runner import train
from rayseg.methods import METHODS
from rayseg.models import build_model
from rayseg.models.weights import load_weights
from tests.engine_helpers import (REPO, assert_same_tensors, kill_after_first_checkpoint, load_state,
                                  ray_checkpoint_epoch, run_cli, tiny_overrides)
from tests.ray_procs import cluster_pids, stop_pids


TWO_WORKERS = {"train.num_workers": 2, "train.epochs": 4, "train.checkpoint_every": 1}


def _latest_ray_checkpoint(run_dir: Path) -> Path:
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    return run_dir / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]


def test_two_worker_run_resumes_after_kill_with_the_same_state(ray_cluster, tmp_path):
    # Reference: the same run, uninterrupted, on the session cluster.
    ref_cfg = load_config(None, tiny_overrides(tmp_path, "straight", **TWO_WORKERS))
    ref = train(ref_cfg, "pretrain", METHODS[ref_cfg.method])
    assert ref["steps"] == 4 * (32 // (4 * 2))  # each of 2 workers takes 4 images per step

    # The same command in a driver process that joins the cluster, killed with -9 after its first checkpoint.
    args = ["pretrain", "--address", ray_cluster, *tiny_overrides(tmp_path, "interrupted", **TWO_WORKERS)]
    run_dir = tmp_path / "interrupted"
    kill_after_first_checkpoint(args, run_dir, ray_checkpoint_epoch)
    assert not (run_dir / "summary.json").exists()
    epoch_done = ray_checkpoint_epoch(run_dir)
    assert epoch_done < 3

    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming after epoch {epoch_done + 1}" in r.stdout
    final = load_state(_latest_ray_checkpoint(run_dir) / "state.pt")
    straight = load_state(_latest_ray_checkpoint(tmp_path / "straight") / "state.pt")
    assert final["epoch"] == straight["epoch"] == 3
    assert final["global_step"] == straight["global_step"]
    assert_same_tensors(final["method"], straight["method"], atol=1e-5)
    assert_same_tensors(final["optimizer"]["state"], straight["optimizer"]["state"], atol=1e-5)

    # The confusion matrix summed over the 2 workers' halves of the val set equals one process scoring all of it
    # with the exported model.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = build_model(**{k: v for k, v in load_state(run_dir / "export/model.pt")["arch"].items()})
    load_weights(model, run_dir / "export/model.pt")
    cfg = load_config(run_dir / "config.yaml")
    single = evaluate(model, cfg, torch.device("cpu"), rank=0, world=1)
    assert single["num_pixels"] == metrics["num_pixels"] == 8 * 32 * 32
    assert single["per_class_iou"] == metrics["per_class_iou"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` on 127.0.0.1 in its own temp dir with its own auth token; stopped by its PIDs. Yields
    (dashboard URL, the environment that holds the token, GCS address)."""
    temp_dir = tempfile.mkdtemp(prefix="rs-head-", dir="/tmp")
    token_file = Path(temp_dir) / "token"
    token_file.write_text(secrets.token_hex(32))
    dash, gcs = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--num-cpus=2",
         # the agent's HTTP port is fixed (52365) by default and taken if another cluster runs here
         f"--dashboard-agent-listen-port={_free_port()}",
         "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=120)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}", env, f"127.0.0.1:{gcs}"
    finally:
        stop_pids(cluster_pids(temp_dir))


def _rayseg_in(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayseg", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


def test_relative_paths_from_another_directory_on_ray_train_workers(ray_cluster, tmp_path):
    """A 2-worker pretrain and a 1-worker fine-tune, run from a folder that is not the project root, with relative
    storage, weights and data: Ray Train gives each worker its own working directory, so every path must reach the
    workers absolute."""
    from rayseg.data.synthetic import SyntheticSegmentation, write_voc_folder

    for split, n in (("train", 16), ("val", 4)):
        write_voc_folder(SyntheticSegmentation("A", split=split, num_images=n, image_size=32, seed=1),
                         tmp_path / "data" / "voc")
    small = ["model.output_stride=16", "model.channels=16", "train.batch_size=4", "train.epochs=1",
             "data.crop_size=32", "data.image_size=32", "data.num_train=16"]
    pre = _rayseg_in(tmp_path, ["pretrain", "--address", ray_cluster, "run.storage=runs", "run.name=pre",
                                "train.num_workers=2", *small])
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert f"run folder {tmp_path / 'runs' / 'pre'}" in pre.stdout  # printed absolute
    ft = _rayseg_in(tmp_path, ["finetune", "--address", ray_cluster, "run.storage=runs", "run.name=ft",
                               "model.init_weights=runs/pre/export/backbone.pt", "data.kind=voc",
                               "data.root=data/voc", "data.num_classes=7", "train.num_workers=1", *small])
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert (tmp_path / "runs" / "pre" / "export" / "backbone.pt").is_file()
    metrics = json.loads((tmp_path / "runs" / "ft" / "metrics.json").read_text())
    assert metrics["num_pixels"] == 4 * 32 * 32
    saved = load_config(tmp_path / "runs" / "ft" / "config.yaml")
    assert saved.model.init_weights == str(tmp_path / "runs" / "pre" / "export" / "backbone.pt")
    assert saved.data.root == str(tmp_path / "data" / "voc")


def test_a_second_cluster_on_the_host_keeps_the_output_clean(ray_cluster, tmp_path):
    """With the session cluster up, a command that starts its own local cluster: Ray Train's placement-group
    cleaner is told which cluster is its own (no "multiple active Ray instances"), and off a terminal Ray's
    coloured prefixes lose their escape codes."""
    r = _rayseg_in(tmp_path, ["pretrain", "run.storage=runs", "run.name=own", "train.num_workers=1",
                              "train.epochs=2", "data.num_train=16", "data.image_size=32", "data.crop_size=32",
                              "model.output_stride=16", "model.channels=16", "train.batch_size=4"])
    assert r.returncode == 0, r.stderr[-3000:]
    output = r.stdout + r.stderr
    assert "multiple active Ray instances" not in output and "Failed to query Ray Train Controller" not in output
    assert "\x1b[" not in output and "PreemptionWatcher" not in output
    assert "(RayTrainWorker pid=" in output or "[rayseg] epoch 2/2" in output


def _submit(address: str, env: dict, entrypoint: list[str], runtime_env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", address,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--", "python", *entrypoint]
    deadline = time.time() + 90
    while True:  # right after `ray start` the head's job agent may not be up yet
        r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=400, cwd=REPO)
        if "No available agent to submit job" not in r.stderr or time.time() > deadline:
            return r
        time.sleep(3)


def test_ray_job_submit_label_pretrain_finetune_with_relative_paths(ray_head, tmp_path):
    """`ray job submit --working-dir .` on a token-authenticated head: the PSSL chain with relative paths, resolved
    against RAYSEG_BASE_DIR (the shared folder), lands there and not in the job's package folder; without it a
    relative output is refused in one line; a second submission of a finished run does no work."""
    from rayseg.data.synthetic import SyntheticClassification, write_image_folder

    address, env, _ = ray_head
    write_image_folder(SyntheticClassification(num_images=8, image_size=32, classes=[0, 1]), tmp_path / "imgs")
    shared = {"env_vars": {"RAYSEG_BASE_DIR": str(tmp_path)}}

    refused = _submit(address, env, ["jobs/label.py", f"label.images={tmp_path / 'imgs'}", "label.members=[resnet18]",
                                     "label.allow_random_weights=true"], {})
    assert refused.returncode != 0 and "error: label.output: relative path 'rayseg_labels' inside a Ray job" in (
        refused.stdout + refused.stderr)

    label = _submit(address, env, ["jobs/label.py", "label.images=imgs", "label.output=labels",
                                   "label.members=[resnet18]", "label.allow_random_weights=true",
                                   "label.explainer.samples=2", "label.input_size=32", "label.cpus_per_task=0.5"],
                    shared)
    assert label.returncode == 0, (label.stdout + label.stderr)[-3000:]
    assert "committed: 1/1 shards, 8/8 images" in label.stdout
    (version,) = [p.name for p in (tmp_path / "labels").iterdir()]
    small = ["model.output_stride=16", "model.channels=16", "train.batch_size=4", "train.epochs=1",
             "data.crop_size=32", "train.num_workers=1", "run.storage=runs"]
    pretrain = _submit(address, env, ["jobs/pretrain.py", "method=pssl", f"pssl.labels=labels/{version}",
                                      "pssl.images=imgs", "pssl.num_classes=2", "run.name=pssl", *small], shared)
    assert pretrain.returncode == 0, (pretrain.stdout + pretrain.stderr)[-3000:]
    finetune_args = ["jobs/finetune.py", "model.init_weights=runs/pssl/export/model.pt", "data.num_train=16",
                     "data.num_val=4", "data.image_size=32", "run.name=ft", *small]
    finetune = _submit(address, env, finetune_args, shared)
    assert finetune.returncode == 0, (finetune.stdout + finetune.stderr)[-3000:]
    assert "mIoU" in finetune.stdout  # the job's metrics table, streamed back by `ray job submit`
    assert (tmp_path / "runs" / "ft" / "metrics.json").is_file()
    assert "log.txt" in {p.name for p in (tmp_path / "runs" / "ft").iterdir()}
    again = _submit(address, env, finetune_args, shared)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_joining_a_token_cluster_without_the_token_is_one_error_line_that_names_the_fix(ray_head, tmp_path):
    """`rayseg label --address HOST:PORT` of a `ray start` cluster (token authentication, Ray's default): without
    RAY_AUTH_MODE Ray only says it failed to connect; rayseg's one error line says what to set, and with it set the
    same command joins and labels. The token itself is never printed."""
    from rayseg.data.synthetic import SyntheticClassification, write_image_folder

    _, env, gcs = ray_head
    write_image_folder(SyntheticClassification(num_images=8, image_size=32, classes=[0, 1]), tmp_path / "imgs")
    args = [sys.executable, "-m", "rayseg", "label", "--address", gcs, "label.images=imgs", "label.output=labels",
            "label.members=[resnet18]", "label.allow_random_weights=true", "label.explainer.samples=2",
            "label.input_size=32", "label.cpus_per_task=0.5"]
    no_token = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=no_token, timeout=300)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode == 2 and errors == [
        f"error: --address (or RAY_ADDRESS): Failed to connect to Ray cluster at {gcs}; a cluster from `ray start` "
        f"requires token authentication by default (Ray >= 2.59): set RAY_AUTH_MODE=token (the token is read from "
        f"~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN; `ray get-auth-token` on the head prints it)"], (
        refused.stderr[-2000:])
    joined = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "labelled 8 images, 0 errors" in joined.stdout
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    assert token not in refused.stdout + refused.stderr + joined.stdout + joined.stderr
