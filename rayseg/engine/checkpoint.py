"""Training-state checkpoints: one directory with ``state.pt`` (everything needed to resume) and the method's
exported weights (``Method.export``: ``model.pt`` / ``backbone.pt`` for segmentation methods, which
``rayseg finetune`` reads).

``state.pt`` holds the method's state dict (model plus method state such as prototypes or queues), optimizer,
lr scheduler, epoch and global step. There is no GradScaler: mixed precision is bf16, which needs none. RNG
state is not stored because the engine reseeds from (seed, epoch, rank) at every epoch start, so a resumed run
draws the same data order and augmentations as an uninterrupted one.

Every checkpoint directory holds ``checksums.json`` (size and sha256 of each file), written last. On resume the
newest checkpoint whose files match it is restored (:func:`restore_newest_intact`); a truncated or changed one is
named and skipped, so a run falls back to the checkpoint before it instead of failing.

Ray Train stores and restores these directories (``ray.train.report(checkpoint=...)``). In Train local mode
(``num_workers=0``) Ray keeps checkpoints in memory only, so :class:`LocalCheckpointStore` keeps them in the run
folder instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterable

import torch

from rayseg import storage

STATE_FILE = "state.pt"
CHECKSUMS_FILE = "checksums.json"


class CorruptCheckpointError(ValueError):
    def __init__(self, location: str, reason: str):
        self.location, self.reason = location, reason
        super().__init__(f"{location}: {reason}")


def write_checksums(directory: str | os.PathLike) -> None:
    """Record size and sha256 of every file of a checkpoint directory in ``checksums.json``."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    records = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": storage.sha256_file(p)}
               for p in files}
    (directory / CHECKSUMS_FILE).write_text(json.dumps(records, indent=1))


def verify_checkpoint(directory: str | os.PathLike) -> None:
    """``CorruptCheckpointError`` naming the first file of ``directory`` that does not match ``checksums.json``
    (or a missing ``state.pt``). A checkpoint of a rayseg version without checksums is checked when loaded."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise CorruptCheckpointError(str(directory / STATE_FILE), "missing")
    if not (directory / CHECKSUMS_FILE).is_file():
        return
    try:
        records = json.loads((directory / CHECKSUMS_FILE).read_text())
    except ValueError:
        raise CorruptCheckpointError(str(directory / CHECKSUMS_FILE), "not valid JSON") from None
    for name, record in records.items():
        path = directory / name
        if not path.is_file():
            raise CorruptCheckpointError(str(path), "missing")
        if path.stat().st_size != record["bytes"]:
            raise CorruptCheckpointError(str(path), f"{path.stat().st_size} bytes, checksums.json records "
                                                    f"{record['bytes']} (truncated?)")
        if storage.sha256_file(path) != record["sha256"]:
            raise CorruptCheckpointError(str(path), "content does not match its sha256 in checksums.json")


def read_state(directory: str | os.PathLike) -> dict:
    """The verified ``state.pt`` of a checkpoint directory; ``CorruptCheckpointError`` naming the bad file."""
    verify_checkpoint(directory)
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a damaged file (old checkpoints)
        raise CorruptCheckpointError(str(path), f"cannot be read ({type(exc).__name__}: {exc})") from None


def apply_state(state: dict, method, optimizer, scheduler) -> tuple[int, int]:
    """Restore ``state`` in place; returns (last finished epoch, global step)."""
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), int(state["global_step"])


Candidate = tuple[str, Callable[[], ContextManager[str]]]  # (name for messages, opens it as a local directory)


def restore_newest_intact(candidates: Iterable[Candidate], method, optimizer, scheduler,
                          say: Callable[[str], None]) -> tuple[int, int] | None:
    """Restore the first intact checkpoint of ``candidates`` (newest first); each corrupt one is named through
    ``say``. Returns (last finished epoch, global step), or None when there is none to restore."""
    skipped = []
    for name, open_directory in candidates:
        with open_directory() as directory:
            try:
                state = read_state(directory)
            except CorruptCheckpointError as exc:
                skipped.append(name)
                say(f"[rayseg] checkpoint {name} is corrupt ({exc.reason}: {Path(exc.location).name}); "
                    f"trying the one before it")
                continue
        if skipped:
            say(f"[rayseg] resuming from the newest intact checkpoint {name}")
        return apply_state(state, method, optimizer, scheduler)
    if skipped:
        say("[rayseg] no intact checkpoint left; training starts from the beginning")
    return None


def ray_candidates(latest) -> list[Candidate]:
    """The Ray Train checkpoint ``latest`` (``ray.train.get_checkpoint()``) and the older ones beside it in the run
    folder (Ray names them ``checkpoint_<timestamp>``), newest first."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    filesystem, path = latest.filesystem, latest.path.rstrip("/")
    folder, newest = posixpath.split(path)
    infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    names = {i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")}
    names = sorted({n for n in names if n <= newest} | {newest}, reverse=True)
    return [(name, lambda name=name: Checkpoint(posixpath.join(folder, name), filesystem=filesystem).as_directory())
            for name in names]


def local_candidates(directories: Iterable[str | os.PathLike]) -> list[Candidate]:
    return [(str(d), lambda d=d: contextlib.nullcontext(str(d))) for d in directories]


def save_checkpoint(directory: str | os.PathLike, method, optimizer, scheduler, epoch: int, global_step: int,
                    meta: dict) -> None:
    directory = Path(directory)
    torch.save({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "global_step": global_step},
               directory / STATE_FILE)
    method.export(directory, meta)
    write_checksums(directory)


class LocalCheckpointStore:
    """Checkpoints as ``<run_dir>/local_checkpoints/epoch_NNNNNN`` (atomic rename), the newest ``keep`` kept."""

    FOLDER = "local_checkpoints"

    def __init__(self, run_dir: str | os.PathLike, keep: int):
        self.root = Path(run_dir) / self.FOLDER
        self.keep = keep

    def latest(self) -> Path | None:
        done = self.newest_first()
        return done[0] if done else None

    def newest_first(self) -> list[Path]:
        return sorted((p for p in self.root.glob("epoch_*") if p.is_dir()), reverse=True)

    def commit(self, source: str | os.PathLike, epoch: int) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / f"epoch_{epoch:06d}"
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except OSError:  # no space, ...: no half copy left behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        for old in sorted(p for p in self.root.glob("epoch_*"))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target
