"""Small runs for the engine tests: a tiny resnet18-FCN on 32x32 synthetic scenes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(storage: Path, name: str, **extra) -> list[str]:
    base = {
        "run.storage": str(storage), "run.name": name, "run.seed": 3,
        "data.num_train": 32, "data.num_val": 8, "data.image_size": 32, "data.crop_size": 32,
        "model.output_stride": 16, "model.channels": 32,
        "train.batch_size": 4, "train.epochs": 3, "train.log_every": 2, "train.num_workers": 0,
        "optim.lr": 0.02, "optim.warmup_steps": 2,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayseg", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, **(env or {})})


def local_checkpoint_epoch(run_dir: Path) -> int | None:
    """Epoch of the newest committed local-mode checkpoint (renamed into place only when complete)."""
    done = sorted(p for p in run_dir.glob("local_checkpoints/epoch_*") if (p / "state.pt").is_file())
    return load_state(done[-1] / "state.pt")["epoch"] if done else None


def ray_checkpoint_epoch(run_dir: Path) -> int | None:
    """Epoch of the newest checkpoint Ray Train has committed (listed in its snapshot after the upload)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    latest = snapshot.get("latest_checkpoint_result")
    return latest["metrics"]["epoch"] if latest else None


def kill_after_first_checkpoint(args: list[str], run_dir: Path, committed_epoch, timeout: float = 300) -> str:
    """Start ``rayseg ARGS`` and SIGKILL its whole process group as soon as one checkpoint is committed
    (``committed_epoch(run_dir)`` is not None)."""
    proc = subprocess.Popen([sys.executable, "-m", "rayseg", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if committed_epoch(run_dir) is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                raise AssertionError(f"run ended before it could be interrupted:\n{proc.stdout.read()}")
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint appeared in time")
        out, _ = proc.communicate(timeout=60)
        return out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k
        elif isinstance(a[k], dict):
            assert_same_tensors(a[k], b[k], atol)
