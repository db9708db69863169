"""The engine in Ray Train local mode (num_workers=0): in-process, no cluster."""

import json
import re
from pathlib import Path

import pytest
import torch

from rayseg.config import load_config
from rayseg.engine.runner import train
from rayseg.methods import METHODS
from rayseg.models import build_model
from rayseg.models.weights import load_weights
from tests.engine_helpers import (assert_same_tensors, kill_after_first_checkpoint, load_state,
                                  local_checkpoint_epoch, run_cli, tiny_overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(storage, "local", **{"train.keep_checkpoints": 2}))
    summary = train(cfg, "pretrain", METHODS[cfg.method])
    return cfg, summary


def test_run_writes_its_outputs(finished_run):
    cfg, summary = finished_run
    run_dir = cfg.run_dir("pretrain")
    steps_per_epoch = 32 // 4
    assert summary["steps"] == 3 * steps_per_epoch
    assert summary["final_losses"]["loss"] > 0 and summary["images_per_s"] > 0
    assert load_config(f"{run_dir}/config.yaml") == cfg  # the resolved config beside the outputs
    assert json.loads(open(f"{run_dir}/tags.json").read()) == {"command": "pretrain", "method": "supervised",
                                                                "head": "linear", "start": "scratch", "seed": 3,
                                                                "eval": "finetune"}
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
    metrics = json.loads((Path(cfg.run_dir("pretrain")) / "metrics.json").read_text())
    per_class = {f"val_iou/{name}" for name, v in metrics["per_class_iou"].items() if v is not None}
    assert per_class and per_class <= tags  # one curve per class that was scored
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[-1] < lrs[0]  # poly decay
    previews = [t for t in acc.Tags()["images"] if t.startswith("val/predictions/")]
    assert len(previews) == 4  # one panel per val image: image | prediction | true mask
    panel = acc.Images(previews[0])[-1]
    assert (panel.width, panel.height) == (3 * 32, 32)


def test_tensorboard_hparams_hold_the_settings_and_final_miou(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg, summary = finished_run
    acc = EventAccumulator(f"{cfg.run_dir('pretrain')}/tensorboard")
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    params = {k: v.ListFields()[0][1] for k, v in start.hparams.items()}
    assert params["optim.lr"] == pytest.approx(cfg.optim.lr) and params["model.backbone"] == cfg.model.backbone
    assert params["tag.start"] == "scratch" and params["tag.command"] == "pretrain"
    assert acc.Scalars("hparam/miou")[-1].value == pytest.approx(summary["miou"])


def _files(run_dir) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every file under ``run_dir``."""
    root = __import__("pathlib").Path(run_dir)
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _scalars(run_dir) -> dict[str, int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(f"{run_dir}/tensorboard")
    acc.Reload()
    return {tag: len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def test_rerunning_a_finished_run_does_no_work(finished_run, capsys):
    cfg, summary = finished_run
    run_dir = cfg.run_dir("pretrain")
    before, scalars = _files(run_dir), _scalars(run_dir)
    again = train(cfg, "pretrain", METHODS[cfg.method])
    assert "is already complete (3 epochs); nothing to do" in capsys.readouterr().out
    assert again == summary  # summary.json as the run wrote it
    after = _files(run_dir)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, changed  # not one file written: no config, checkpoint, export, metrics or log
    assert _scalars(run_dir) == scalars


def test_a_finished_run_returns_without_starting_ray(finished_run):
    """The same run asked for with Ray Train workers: it is finished, so no cluster starts (the ray guard of
    tests/conftest.py fails an unmarked test that starts one)."""
    cfg, summary = finished_run
    r = run_cli(["pretrain", *tiny_overrides(Path(cfg.run.storage), cfg.run.name, **{"train.num_workers": 2})])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "is already complete (3 epochs); nothing to do" in r.stdout


def test_progress_lines_show_loss_rate_and_eta(tmp_path):
    r = run_cli(["pretrain", *tiny_overrides(tmp_path, "p", **{"train.epochs": 1})])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("[rayseg] epoch 1/1 step")]
    assert len(lines) == 4  # every 2 of 8 steps
    assert re.search(r"loss \d+\.\d{4} lr \S+ \d+\.\d img/s ETA \d+s", lines[-1])
    # the run folder keeps what the run printed, with timestamps
    logged = (tmp_path / "p" / "log.txt").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in logged if "epoch 1/1 step" in line] == lines
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[rayseg\]", logged[0])


def test_killed_local_run_resumes_to_the_same_result(tmp_path):
    """kill -9 after the first checkpoint, re-run the same command: it continues from that epoch and ends with
    exactly the weights and optimizer state of an uninterrupted run."""
    args = ["pretrain", *tiny_overrides(tmp_path, "interrupted", **{"train.epochs": 4})]
    run_dir = tmp_path / "interrupted"
    kill_after_first_checkpoint(args, run_dir, local_checkpoint_epoch)
    assert not (run_dir / "summary.json").exists()
    epoch_done = local_checkpoint_epoch(run_dir)
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


@pytest.fixture
def voc_with_bad_samples(tmp_path):
    """A VOC tree of 16 synthetic scenes; one image truncated, one mask with a label value out of range."""
    import numpy as np
    from PIL import Image

    from rayseg.data.synthetic import SyntheticSegmentation, write_voc_folder

    root = tmp_path / "voc"
    write_voc_folder(SyntheticSegmentation("A", "train", num_images=16, image_size=32, seed=1), root, "train")
    write_voc_folder(SyntheticSegmentation("A", "val", num_images=4, image_size=32, seed=1), root, "val")
    ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    image = next((root / "JPEGImages").glob(f"{ids[3]}.*"))
    image.write_bytes(image.read_bytes()[:60])
    mask_path = root / "SegmentationClass" / f"{ids[7]}.png"
    mask = np.array(Image.open(mask_path))
    mask[0, 0] = 9
    Image.fromarray(mask).save(mask_path)
    return root, image, mask_path


def _voc_overrides(tmp_path, root, **extra):
    return tiny_overrides(tmp_path / "runs", "voc", **{"data.kind": "voc", "data.root": root, "data.num_classes": 7,
                                                      "train.epochs": 1, **extra})


def test_bad_samples_are_skipped_and_counted(tmp_path, voc_with_bad_samples):
    root, image, mask_path = voc_with_bad_samples
    r = run_cli(["finetune", *_voc_overrides(tmp_path, root, **{"data.skip_bad": "true"})])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 2 bad samples" in r.stdout
    summary = json.loads((tmp_path / "runs/voc/summary.json").read_text())
    assert summary["skipped_bad_samples"] == 2
    listed = (tmp_path / "runs/voc/bad_samples.txt").read_text()
    assert str(image) in listed and f"{mask_path}: label values [9] out of range" in listed


def test_a_bad_sample_without_skip_bad_is_one_error_line(tmp_path, voc_with_bad_samples):
    root, image, mask_path = voc_with_bad_samples
    r = run_cli(["finetune", *_voc_overrides(tmp_path, root)])
    assert r.returncode == 1
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and (str(image) in err[0] or str(mask_path) in err[0]), r.stderr[-3000:]
    assert "Traceback" not in r.stderr
