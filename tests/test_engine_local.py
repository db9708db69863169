"""The engine in Ray Train local mode (num_workers=0): in-process, no cluster."""

import json
import re

import pytest
import torch

from rayseg.config import load_config
from rayseg.engine.runner import train
from rayseg.models import build_model
from rayseg.models.weights import load_weights
from tests.engine_helpers import (assert_same_tensors, kill_after_first_checkpoint, load_state, run_cli,
                                  tiny_overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(storage, "local", **{"train.keep_checkpoints": 2}))
    summary = train(cfg, "pretrain")
    return cfg, summary


def test_run_writes_its_outputs(finished_run):
    cfg, summary = finished_run
    run_dir = cfg.run_dir("pretrain")
    steps_per_epoch = 32 // 4
    assert summary["steps"] == 3 * steps_per_epoch
    assert summary["final_losses"]["loss"] > 0 and summary["images_per_s"] > 0
    assert load_config(f"{run_dir}/config.yaml") == cfg  # the resolved config beside the outputs
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert 0.0 <= metrics["miou"] <= 1.0 and set(metrics["per_class_iou"]) == {
        "background", "disc", "square", "triangle", "ring", "cross", "ellipse"}
    kept = sorted(p.name for p in (__import__("pathlib").Path(run_dir) / "local_checkpoints").glob("epoch_*"))
    assert kept == ["epoch_000001", "epoch_000002"]


def test_exported_weights_load_into_a_fresh_model(finished_run):
    cfg, summary = finished_run
    model = build_model("resnet18", "fcn", num_classes=7, output_stride=16, channels=32)
    report = load_weights(model, summary["export"]["model"])
    saved = torch.load(summary["export"]["model"], map_location="cpu", weights_only=True)
    assert saved["meta"]["method"] == "supervised" and saved["meta"]["class_names"][0] == "background"
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved["state_dict"][k]), k
    assert not report.dropped


def test_tensorboard_has_loss_lr_throughput_and_miou(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = finished_run
    acc = EventAccumulator(f"{cfg.run_dir('pretrain')}/tensorboard")
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/loss", "train/lr", "train/images_per_s", "val/miou"} <= tags
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[-1] < lrs[0]  # poly decay


def test_rerunning_a_finished_run_does_no_work(finished_run):
    cfg, summary = finished_run
    again = train(cfg, "pretrain")
    assert again == summary


def test_progress_lines_show_loss_rate_and_eta(tmp_path):
    r = run_cli(["pretrain", *tiny_overrides(tmp_path, "p", **{"train.epochs": 1})])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("[rayseg] epoch 1/1 step")]
    assert len(lines) == 4  # every 2 of 8 steps
    assert re.search(r"loss \d+\.\d{4} lr \S+ \d+\.\d img/s ETA \d+s", lines[-1])


def test_killed_local_run_resumes_to_the_same_result(tmp_path):
    """kill -9 after the first checkpoint, re-run the same command: it continues from that epoch and ends with
    exactly the weights and optimizer state of an uninterrupted run."""
    args = ["pretrain", *tiny_overrides(tmp_path, "interrupted", **{"train.epochs": 4})]
    run_dir = tmp_path / "interrupted"
    kill_after_first_checkpoint(args, run_dir, "local_checkpoints/epoch_*")
    assert not (run_dir / "summary.json").exists()
    first = sorted(run_dir.glob("local_checkpoints/epoch_*"))[-1]
    epoch_done = load_state(first / "state.pt")["epoch"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming after epoch {epoch_done + 1}" in r.stdout

    ref = run_cli(["pretrain", *tiny_overrides(tmp_path, "straight", **{"train.epochs": 4})])
    assert ref.returncode == 0, ref.stderr[-2000:]
    resumed = load_state(run_dir / "local_checkpoints/epoch_000003/state.pt")
    straight = load_state(tmp_path / "straight/local_checkpoints/epoch_000003/state.pt")
    assert resumed["global_step"] == straight["global_step"] == 4 * 8
    assert_same_tensors(resumed["method"], straight["method"])
    assert_same_tensors(resumed["optimizer"]["state"], straight["optimizer"]["state"])
