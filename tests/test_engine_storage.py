"""Training with ``run.storage`` on an object store (a real S3 endpoint, moto): outputs, resume from the store,
fine-tuning from exported weights there, and Ray Train's own checkpoints through its pyarrow filesystem."""

import io
import json

import torch
import yaml

from rayseg import storage
from rayseg.config import config_from_dict, load_config
from rayseg.engine.runner import train
from rayseg.methods import METHODS
from rayseg.models import build_model
from rayseg.models.weights import load_weights
from tests.engine_helpers import assert_same_tensors, tiny_overrides

# mobilenet_v3_large: a quarter of resnet18's bytes to move through the (slow, pure-Python) S3 server per checkpoint
SMALL = {"model.backbone": "mobilenet_v3_large"}


def _state(location: str) -> dict:
    return torch.load(io.BytesIO(storage.read_bytes(location)), map_location="cpu", weights_only=True)


def test_local_mode_run_on_s3_publishes_resumes_and_feeds_a_finetune(s3_uri, tmp_path, capsys):
    cfg = load_config(None, tiny_overrides(s3_uri, "on-s3", **SMALL, **{"train.epochs": 2, "train.keep_checkpoints": 1}))
    run_dir = cfg.run_dir("pretrain")
    assert run_dir == storage.join(s3_uri, "on-s3")
    summary = train(cfg, "pretrain", METHODS[cfg.method])

    assert summary["steps"] == 2 * (32 // 4)
    assert summary["export"]["model"] == storage.join(run_dir, "export", "model.pt")
    assert json.loads(storage.read_text(storage.join(run_dir, "summary.json")))["fit_seconds"] > 0
    names = set(storage.list_dir(run_dir))
    assert {"config.yaml", "export", "metrics.json", "summary.json", "tensorboard", "local_checkpoints"} <= names
    assert config_from_dict(yaml.safe_load(storage.read_text(storage.join(run_dir, "config.yaml")))) == cfg
    assert storage.list_dir(storage.join(run_dir, "local_checkpoints")) == ["epoch_000001"]  # keep 1: epoch 0 gone
    assert storage.list_dir(storage.join(run_dir, "tensorboard"))  # the event file was published
    assert 0.0 <= json.loads(storage.read_text(storage.join(run_dir, "metrics.json")))["miou"] <= 1.0

    again = train(cfg, "pretrain", METHODS[cfg.method])  # complete on the store: nothing to do
    assert again["steps"] == summary["steps"]
    assert "is already complete" in capsys.readouterr().out

    # A fine-tune reads the exported weights from the store.
    model = build_model("mobilenet_v3_large", "fcn", num_classes=7, output_stride=16, channels=32)
    assert not load_weights(model, summary["export"]["model"]).dropped
    ft = load_config(None, tiny_overrides(tmp_path, "ft", **SMALL, **{"train.epochs": 1,
                                                            "model.init_weights": summary["export"]["model"]}))
    assert train(ft, "finetune", METHODS["supervised"])["steps"] == 32 // 4


def test_a_run_on_s3_resumes_from_the_checkpoint_on_the_store(s3_uri, tmp_path, capsys):
    straight_cfg = load_config(None, tiny_overrides(tmp_path, "straight", **SMALL, **{"train.epochs": 2}))
    straight = train(straight_cfg, "pretrain", METHODS["supervised"])
    cfg = load_config(None, tiny_overrides(s3_uri, "cut", **SMALL, **{"train.epochs": 2, "train.keep_checkpoints": 2}))
    run_dir = cfg.run_dir("pretrain")
    train(cfg, "pretrain", METHODS[cfg.method])
    # As if killed during the last epoch: the store holds the checkpoint of epoch 1 only and no summary.
    storage.delete(storage.join(run_dir, "summary.json"))
    storage.delete(storage.join(run_dir, "local_checkpoints", "epoch_000001"))
    capsys.readouterr()
    resumed = train(cfg, "pretrain", METHODS[cfg.method])
    assert "resuming after epoch 1" in capsys.readouterr().out
    assert resumed["steps"] == straight["steps"]
    assert_same_tensors(_state(storage.join(run_dir, "local_checkpoints", "epoch_000001", "state.pt"))["method"],
                        torch.load(f"{tmp_path}/straight/local_checkpoints/epoch_000001/state.pt",
                                   map_location="cpu", weights_only=True)["method"], atol=1e-6)


def test_ray_train_run_on_s3_keeps_its_checkpoints_there(ray_cluster, s3_uri):
    cfg = load_config(None, tiny_overrides(s3_uri, "ray-on-s3", **SMALL, **{"train.num_workers": 1, "train.epochs": 2,
                                                                  "train.cpus_per_worker": 1}))
    summary = train(cfg, "pretrain", METHODS[cfg.method])
    run_dir = cfg.run_dir("pretrain")
    names = storage.list_dir(run_dir)
    checkpoints = [n for n in names if n.startswith("checkpoint_") and not n.endswith(".json")]
    assert checkpoints, names  # Ray Train uploaded its checkpoints through the S3 filesystem
    latest = sorted(checkpoints)[-1]
    state = _state(storage.join(run_dir, latest, "state.pt"))
    assert state["epoch"] == 1 and state["global_step"] == summary["steps"] == 2 * (32 // 4)
    assert storage.is_file(storage.join(run_dir, "export", "model.pt")) and "local_checkpoints" not in names
