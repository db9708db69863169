"""Locations in a config: inputs are made absolute where the config is built (Ray workers have other working
directories), outputs where the command writes them, and a relative output inside a Ray job is refused unless
RAYSEG_BASE_DIR names the shared folder to resolve it against. A wrong --address fails in seconds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rayseg.config import ConfigError, load_config, output_location
from rayseg.engine.runner import check_address
from tests.engine_helpers import REPO

IN_JOB = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}  # what Ray's job supervisor puts in the entrypoint's environment


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAYSEG_BASE_DIR", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    (tmp_path / "data" / "coco").mkdir(parents=True)
    (tmp_path / "w.pt").write_bytes(b"")
    return tmp_path


def test_relative_inputs_become_absolute_against_the_working_directory(elsewhere):
    cfg = load_config(None, ["data.kind=images", "data.root=data/coco", "model.init_weights=./w.pt",
                             "label.members=[resnet18:w.pt, resnet34]", "label.allow_random_weights=true", "pssl.labels=s3://bucket/labels/v1",
                             "mdp.datasets=[synthetic:A, voc:data/voc]", "label.images=~/imagenet"])
    assert cfg.data.root == str(elsewhere / "data" / "coco")
    assert cfg.model.init_weights == str(elsewhere / "w.pt")
    assert cfg.label.members == [f"resnet18:{elsewhere / 'w.pt'}", "resnet34"]
    assert cfg.mdp.datasets == ["synthetic:A", f"voc:{elsewhere / 'data' / 'voc'}"]
    assert cfg.pssl.labels == "s3://bucket/labels/v1"  # URIs as given
    assert cfg.label.images == os.path.expanduser("~/imagenet")
    assert cfg.run_dir("pretrain").startswith(str(elsewhere / "rayseg_runs") + os.sep)
    # the resolved config is what the workers read: loading it again elsewhere changes nothing
    again = load_config(None, ["data.kind=images", f"data.root={cfg.data.root}"])
    assert again.data.root == cfg.data.root


def test_rayseg_base_dir_is_what_relative_paths_mean(elsewhere, monkeypatch):
    monkeypatch.setenv("RAYSEG_BASE_DIR", "/mnt/shared")
    cfg = load_config(None, ["pssl.labels=rayseg_labels/v1"])
    assert cfg.pssl.labels == "/mnt/shared/rayseg_labels/v1"
    assert cfg.run_dir("finetune").startswith("/mnt/shared/rayseg_runs/finetune-")
    assert output_location("rayseg_labels", "label.output") == "/mnt/shared/rayseg_labels"


def test_a_relative_output_inside_a_ray_job_is_refused_unless_a_base_dir_is_set(elsewhere, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    cfg = load_config(None, [])  # building the config is fine: label.output is not this command's output
    with pytest.raises(ConfigError, match=r"^run.storage: relative path 'rayseg_runs' inside a Ray job would be "
                                          r"written into the job's temporary package folder"):
        cfg.run_dir("pretrain")
    assert load_config(None, ["run.storage=/mnt/shared/runs"]).run_dir("pretrain").startswith("/mnt/shared/runs/")
    assert output_location("s3://bucket/runs", "run.storage") == "s3://bucket/runs"
    monkeypatch.setenv("RAYSEG_BASE_DIR", "/mnt/shared")
    assert cfg.run_dir("pretrain").startswith("/mnt/shared/rayseg_runs/")


def _rayseg(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEG_BASE_DIR")}
    return subprocess.run([sys.executable, "-m", "rayseg", *args], capture_output=True, text=True, cwd=cwd,
                          env={**clean, **(env or {})}, timeout=120)


@pytest.mark.parametrize("command, key", [(["pretrain"], "run.storage"),
                                          (["label", "label.images=imgs", "label.allow_random_weights=true",
                                            "label.members=[resnet18]"], "label.output")])
def test_cli_refuses_a_relative_output_in_a_job_before_ray(tmp_path, command, key):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "cat" / "a.png")
    r = _rayseg(command, tmp_path, IN_JOB)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"error: {key}: relative path")
    assert not (tmp_path / "rayseg_runs").exists() and not (tmp_path / "rayseg_labels").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


def test_an_address_where_no_cluster_answers_fails_in_one_line(tmp_path):
    port = _closed_port()
    with pytest.raises(ConfigError, match=rf"no Ray cluster answers at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="is a dashboard \\(job submission\\) address"):
        check_address("http://127.0.0.1:8265")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        check_address("headnode")
    r = _rayseg(["pretrain", "--address", f"127.0.0.1:{port}", "train.num_workers=1"], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --address (or RAY_ADDRESS): no Ray cluster answers")
    assert len(r.stderr.strip().splitlines()) == 1
    r = _rayseg(["pretrain", "train.num_workers=1"], tmp_path, {"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert r.returncode == 2 and "no Ray cluster answers" in r.stderr


def test_jobs_entry_points_work_from_any_directory(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "pretrain.py"), "train.epochs=0"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: train.epochs: must be >= 1")


def test_outputs_and_data_stay_out_of_a_job_upload(tmp_path):
    """Ray's own ignore-file reading, on a copy of the project's .gitignore and .rayignore."""
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    for name in (".gitignore", ".rayignore"):
        (tmp_path / name).write_text((REPO / name).read_text())
    files = ["rayseg_runs/pretrain-x/summary.json", "rayseg_labels/v1/shard-00000.parquet", "data/VOC2012/a.jpg",
             "jobs/configs/x/rayseg_runs/y.pt", "weights/resnet50.pt", "rayseg/cli.py", "jobs/pretrain.py",
             "jobs/configs/finetune_voc.yaml", "tune_spaces/mdp_temperature_topk.yaml"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    excludes = get_excludes_from_ignore_files(tmp_path, include_gitignore=True)

    def excluded(rel: str) -> bool:  # Ray tests each path and its parents while it walks the tree
        path = tmp_path / rel
        return any(f(p) for f in excludes for p in [path, *path.parents] if p != tmp_path and tmp_path in p.parents)

    assert [rel for rel in files if not excluded(rel)] == ["rayseg/cli.py", "jobs/pretrain.py",
                                                          "jobs/configs/finetune_voc.yaml",
                                                          "tune_spaces/mdp_temperature_topk.yaml"]


@pytest.mark.parametrize("overrides, key, masked", [
    (["run.storage=s3://AKIAXXXX:topsecret@bucket/runs?region=eu-west-1"], "run.storage",
     "s3://***@bucket/runs?region=eu-west-1"),
    (["label.output=s3://bucket/labels?access_key=AKIAXXXX&secret_key=topsecret"], "label.output",
     "s3://bucket/labels?access_key=***&secret_key=***"),
    (["label.allow_random_weights=true", "label.members=['resnet18:gs://b/w.pt?access_token=topsecret']"],
     "label.members", "gs://b/w.pt?access_token=***"),
])
def test_credentials_in_a_uri_are_refused_without_being_shown(overrides, key, masked, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert message.startswith(f"{key}: {masked}: credentials in a URI") and "topsecret" not in message
    assert "AKIAXXXX" not in message
    r = _rayseg(["pretrain", *overrides], tmp_path)
    assert r.returncode == 2 and "topsecret" not in r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("blocker", ["file", "read-only"])
def test_an_output_that_cannot_be_written_is_one_line_before_ray(tmp_path, blocker):
    if blocker == "file":
        (tmp_path / "runs").write_text("a file where the run folder should go")
    else:
        (tmp_path / "runs").mkdir()
        (tmp_path / "runs").chmod(0o500)
        if os.access(tmp_path / "runs", os.W_OK):  # root ignores permissions
            pytest.skip("this user can write into read-only folders")
    r = _rayseg(["pretrain", "run.storage=runs", "train.num_workers=1"], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith(f"error: run.storage: cannot write the run folder {tmp_path / 'runs'}")
    assert len(r.stderr.strip().splitlines()) == 1
