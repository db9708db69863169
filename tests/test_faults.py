"""Fault injection: drivers killed with -9 at several points and re-run with other plans, truncated shards and
checkpoints, changed images, read-only and full output volumes.

Marked ``faults`` (and ``ray`` where a cluster is used). Everything runs on loopback: the killed drivers join the
session's cluster (``ray_cluster``), so killing a driver's process group ends only that driver. The volumes are
small tmpfs mounts made and unmounted here; where the machine does not allow mounting, those tests are skipped
(the in-process write-error tests in ``test_storage_labels`` still run).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.labeling import shards
from rayseg.models import build_classifier
from tests.engine_helpers import REPO, run_cli, tiny_overrides

pytestmark = pytest.mark.faults

ARCHS = ("resnet18", "mobilenet_v3_small")


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("members")
    specs = []
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(7 + i)
        torch.save(build_classifier(arch, 3).state_dict(), root / f"{arch}.pt")
        specs.append(f"{arch}:{root / arch}.pt")
    return specs


def _label_args(images: Path, output: Path, members: list[str], address: str | None, shard_size: int) -> list[str]:
    return ["label", *(["--address", address] if address else []), f"label.images={images}",
            f"label.output={output}", f"label.members=[{','.join(members)}]", "label.num_classes=3",
            "label.input_size=32", "label.explainer.samples=2", "label.batch_size=4", f"label.shard_size={shard_size}"]


def _manifests(output: Path) -> list[Path]:
    return sorted(output.glob("*/_manifests/shard-*.json"))


def _kill_when(args: list[str], ready, timeout: float = 240) -> str:
    """Start ``rayseg ARGS`` in its own process group and SIGKILL the group as soon as ``ready()`` is true."""
    proc = subprocess.Popen([sys.executable, "-m", "rayseg", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before the kill point:\n{proc.stdout.read()}")
            if time.time() > deadline:
                raise AssertionError("the kill point never came")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_and_replanned_labelling_labels_every_image_exactly_once(ray_cluster, members, tmp_path):
    images, output = tmp_path / "images", tmp_path / "labels"
    write_image_folder(SyntheticClassification(num_images=30, image_size=32, classes=[0, 1, 2]), images)
    args = lambda shard_size: _label_args(images, output, members, ray_cluster, shard_size)  # noqa: E731

    # 1. killed while starting (no shard yet), 2. killed after its first commit with shard size 4
    _kill_when(args(4), lambda: True)  # (at once: before the driver has joined Ray)
    assert _manifests(output) == []
    _kill_when(args(4), lambda: len(_manifests(output)) >= 2)
    first = len(_manifests(output))
    assert 2 <= first < 8

    # 3. images added and removed, shard size 6, killed after one more commit
    extra = tmp_path / "extra"
    write_image_folder(SyntheticClassification(num_images=6, image_size=32, classes=[0, 1, 2], seed=99), extra)
    added = []
    for path in sorted(extra.rglob("*.png")):
        target = images / path.parent.name / f"new_{path.name}"
        path.rename(target)
        added.append(target.relative_to(images).as_posix())
    committed = [i for m in _manifests(output) for i in json.loads(m.read_text())["ids"]]
    removed = [committed[0], sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))[-1]]
    for image_id in removed:
        (images / image_id).unlink()
    _kill_when(args(6), lambda: len(_manifests(output)) >= first + 1)

    # 4. a committed shard truncated, and a labelled image replaced under the same id
    version_dir = _manifests(output)[0].parents[1]
    truncated = version_dir / json.loads(_manifests(output)[-1].read_text())["labels_file"]
    truncated.write_bytes(truncated.read_bytes()[:-50])
    replaced = json.loads(_manifests(output)[1].read_text())["ids"][-1]  # shard 0 keeps the removed image
    (images / replaced).write_bytes((images / added[0]).read_bytes())

    # 5. the re-run with shard size 5 finishes the job
    r = run_cli(args(5))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"shard removed, its images are labelled again: {truncated}: " in r.stdout
    assert f"image(s) changed since they were labelled (first: {images / replaced})" in r.stdout
    assert f"1 labelled image(s) are no longer in the input (first: {removed[0]})" in r.stdout, r.stdout

    current = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    manifests = shards.committed_shards(version_dir)
    planned = collections.Counter(i for m in manifests for i in m["ids"])
    assert max(planned.values()) == 1  # no id in two shards
    assert set(current) <= set(planned) and set(planned) - set(current) == {removed[0]}
    table = shards.read_labels(str(version_dir), columns=["id", "content_hash"])
    rows = dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist()))
    assert len(rows) == table.num_rows == len(current) + 1  # every image once, plus the removed one's old label
    assert rows[replaced] == _sha256(images / replaced)  # labelled from its new content
    assert all(rows[i] == _sha256(images / i) for i in current)
    assert not [p for p in version_dir.rglob("*") if ".tmp" in p.name]
    summary = json.loads((version_dir / "summary.json").read_text())
    assert (summary["images"], summary["removed_images"], summary["shards_redone"]) == (len(current), 1, 2)

    r = run_cli(args(7))  # finished: nothing to do, no Ray work
    assert r.returncode == 0 and "shards 0 done" in r.stdout, r.stderr[-2000:]


def test_training_resumes_from_the_newest_intact_checkpoint(ray_cluster, tmp_path):
    overrides = tiny_overrides(tmp_path, "ckpt", **{"train.num_workers": 1, "train.epochs": 2,
                                                    "train.keep_checkpoints": 2, "train.checkpoint_every": 1})
    r = run_cli(["pretrain", "--address", ray_cluster, *overrides])
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "ckpt"
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    latest = run_dir / snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[:-1000])

    r = run_cli(["pretrain", "--address", ray_cluster, *overrides[:-4], "train.epochs=3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint {latest.name} is corrupt (" in r.stdout and ": state.pt); trying the one before it" in r.stdout
    assert "resuming from the newest intact checkpoint checkpoint_" in r.stdout
    assert "resuming after epoch 1 (step 8)" in r.stdout  # the first epoch's checkpoint: 32 images / 4 per step
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3 * 8


# ------------------------------------------------------------------------------------------ volumes


@pytest.fixture
def volume(tmp_path):
    """``make(size, read_only)``: a tmpfs of ``size`` mounted under tmp_path (skipped where mounting is not
    allowed); unmounted afterwards."""
    mounted: list[Path] = []

    def make(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"vol{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line, which ends the output (Ray's own INFO lines may come before it)."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.stderr, r.stderr[-3000:]
    return errors[0]


def test_read_only_outputs_fail_before_ray(volume, members, tmp_path):
    read_only = volume("1g", read_only=True)  # room enough: the write is what fails
    images = tmp_path / "images"
    write_image_folder(SyntheticClassification(num_images=6, image_size=32, classes=[0, 1, 2]), images)
    no_ray = {"RAY_ADDRESS": "127.0.0.1:1"}  # joining Ray would fail differently
    r = run_cli(_label_args(images, read_only / "labels", members, None, 4), env=no_ray)
    assert r.returncode == 2
    assert _one_error_line(r).startswith(f"error: label.output: cannot create {read_only / 'labels'}/")
    assert _one_error_line(r).endswith("(Read-only file system)")
    r = run_cli(["pretrain", *tiny_overrides(read_only / "runs", "ro")], env=no_ray)
    assert r.returncode == 2
    assert _one_error_line(r) == (f"error: run.storage: cannot write the run folder {read_only / 'runs' / 'ro'} "
                                  f"(Read-only file system)")


def test_a_volume_too_small_for_the_checkpoints_fails_before_ray(volume):
    small = volume("8m")
    r = run_cli(["pretrain", *tiny_overrides(small / "runs", "small")], env={"RAY_ADDRESS": "127.0.0.1:1"})
    assert r.returncode == 2
    line = _one_error_line(r)
    assert line.startswith(f"error: run.storage: {small} has 8 MiB free, but this run's 2 + 1 checkpoints need about")


def test_labelling_onto_a_full_volume_stops_with_one_line_and_resumes(ray_cluster, volume, members, tmp_path):
    images = tmp_path / "images"
    write_image_folder(SyntheticClassification(num_images=24, image_size=32, classes=[0, 1, 2]), images)
    vol = volume("4m")  # room for the whole job and its preview once the filler is gone
    filler = vol / "filler"
    free = os.statvfs(vol).f_bavail * os.statvfs(vol).f_frsize
    filler.write_bytes(b"\0" * (free - 24 * 1024))  # room for a few 4 KiB pages: a shard or two
    args = _label_args(images, vol / "labels", members, ray_cluster, 4)
    r = run_cli(args)
    assert r.returncode == 1, r.stdout[-2000:]
    line = _one_error_line(r)
    assert line.startswith(f"error: {vol / 'labels'}/") and line.endswith(": No space left on device"), line
    version_dir = next((vol / "labels").iterdir())
    assert not [p for p in version_dir.rglob("*") if ".tmp" in p.name]  # no partial temporary file left
    before = len(_manifests(vol / "labels"))

    filler.unlink()
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    manifests = shards.committed_shards(version_dir)
    assert len(manifests) == 6 and before < 6
    ids = [i for m in manifests for i in m["ids"]]
    assert sorted(ids) == sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
