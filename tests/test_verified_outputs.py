"""Verified outputs without Ray: label shards, manifests and checkpoints carry size + sha256; readers name a bad
file, a re-run's scan finds every corrupt shard, and resume falls back to the newest intact checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rayseg.cli import main
from rayseg.labeling.shards import CorruptShardError
from rayseg.data.pseudo_labels import PSSLDataset
from rayseg.engine.checkpoint import (CHECKSUMS_FILE, STATE_FILE, LocalCheckpointStore, local_candidates,
                                      restore_newest_intact, write_checksums)
from rayseg.labeling import shards


def _rows(ids: list[str], bad: tuple[str, ...] = ()) -> list[dict]:
    png = shards.encode_deciles(np.arange(64, dtype=np.uint8).reshape(8, 8) % 10)
    return [{"id": i, "status": "cannot decode" if i in bad else "ok", "content_hash": "0" * 64, "class_index": 0,
             "height": 8, "width": 8, "deciles_png": png} for i in ids]


@pytest.fixture
def version_dir(tmp_path) -> Path:
    """Three committed shards: 0 and 2 with labels only, 1 with an errors file too."""
    root = tmp_path / "v"
    for index, ids in enumerate([["a/0", "a/1"], ["a/2", "a/3"], ["b/4", "b/5"]]):
        shards.commit_shard(str(root), index, ids, _rows(ids, bad=("a/3",)), "v", [], False)
    return root


def _manifest(root: Path, index: int) -> Path:
    return root / "_manifests" / f"shard-{index:05d}.json"


def test_manifests_record_size_and_sha256_of_each_file(version_dir):
    manifest = json.loads(_manifest(version_dir, 1).read_text())
    assert set(manifest["files"]) == {"shard-00001.parquet", "shard-00001.errors.parquet"}
    for name, record in manifest["files"].items():
        assert record["bytes"] == (version_dir / name).stat().st_size > 0 and len(record["sha256"]) == 64
    intact, corrupt = shards.scan_shards(str(version_dir))
    assert [m["shard"] for m in intact] == [0, 1, 2] and corrupt == {}
    assert shards.read_labels(str(version_dir), columns=["id"]).column("id").to_pylist() == ["a/0", "a/1", "a/2",
                                                                                             "b/4", "b/5"]


def test_scan_names_every_kind_of_damage_and_readers_refuse(version_dir):
    labels0 = version_dir / "shard-00000.parquet"
    labels0.write_bytes(labels0.read_bytes()[:-20])  # truncated
    errors1 = version_dir / "shard-00001.errors.parquet"
    data = bytearray(errors1.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    errors1.write_bytes(bytes(data))
    manifest2 = _manifest(version_dir, 2)
    manifest2.write_text(manifest2.read_text()[:40])  # a truncated manifest

    intact, corrupt = shards.scan_shards(str(version_dir))
    assert intact == []
    assert corrupt["shard-00000"] == (f"{labels0}: {labels0.stat().st_size} bytes, its manifest records "
                                      f"{labels0.stat().st_size + 20} (truncated or overwritten)")
    assert corrupt["shard-00001"] == f"{errors1}: content does not match the sha256 its manifest records"
    assert corrupt["shard-00002"].startswith(f"{manifest2}: manifest is not valid JSON")

    with pytest.raises(CorruptShardError) as err:  # the first manifest is corrupt: named, nothing is read
        shards.committed_shards(str(version_dir))
    assert err.value.location == str(manifest2) and "re-run `rayseg label`" in str(err.value)
    manifests = [json.loads(_manifest(version_dir, i).read_text()) for i in (0, 1)]
    with pytest.raises(CorruptShardError, match="truncated or overwritten") as err:
        shards.read_labels(str(version_dir), manifests=manifests)
    assert err.value.location == str(labels0)


def test_an_edited_manifest_fails_its_checksum_and_discard_removes_the_shard(version_dir):
    manifest = json.loads(_manifest(version_dir, 0).read_text())
    manifest["rows"] = 7
    _manifest(version_dir, 0).write_text(json.dumps(manifest))
    _, corrupt = shards.scan_shards(str(version_dir))
    assert corrupt == {"shard-00000": f"{_manifest(version_dir, 0)}: manifest content does not match its sha256"}
    shards.discard_shard(str(version_dir), "shard-00000")
    assert not _manifest(version_dir, 0).exists() and not (version_dir / "shard-00000.parquet").exists()
    assert [m["shard"] for m in shards.scan_shards(str(version_dir))[0]] == [1, 2]


def test_pssl_reader_and_show_labels_name_the_corrupt_file(version_dir, tmp_path, capsys):
    images = tmp_path / "images"
    for cls in ("a", "b"):
        (images / cls).mkdir(parents=True)
    labels2 = version_dir / "shard-00002.parquet"
    labels2.write_bytes(labels2.read_bytes()[:100])
    with pytest.raises(CorruptShardError) as err:
        PSSLDataset(version_dir, images, num_classes=2)
    assert err.value.location == str(labels2)
    argv = ["show-labels", "--labels", str(version_dir), "--images", str(images), "--out", str(tmp_path / "g.png")]
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {labels2}: 100 bytes, its manifest records")


def _checkpoint(directory: Path, epoch: int, checksums: bool = True) -> Path:
    directory.mkdir(parents=True)
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, float(epoch))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    torch.save({"method": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "global_step": 10 * epoch}, directory / STATE_FILE)
    (directory / "model.pt").write_bytes(b"exported weights")
    if checksums:
        write_checksums(directory)
    return directory


def _restore(directories: list[Path]) -> tuple[tuple[int, int] | None, float, list[str]]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    said: list[str] = []
    restored = restore_newest_intact(local_candidates(directories), model, optimizer,
                                     torch.optim.lr_scheduler.StepLR(optimizer, 1), said.append)
    return restored, float(model.weight[0, 0]), said


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    store = LocalCheckpointStore(tmp_path, keep=3)
    for epoch in (1, 2, 3):
        _checkpoint(store.root / f"epoch_{epoch:06d}", epoch)
    newest, middle, oldest = store.newest_first()
    assert json.loads((newest / CHECKSUMS_FILE).read_text())["model.pt"]["bytes"] == len(b"exported weights")

    assert _restore([newest, middle, oldest]) == ((3, 30), 3.0, [])
    state = newest / STATE_FILE
    state.write_bytes(state.read_bytes()[:-10])
    (middle / "model.pt").write_bytes(b"exported weightS")  # same size, other content
    restored, weight, said = _restore([newest, middle, oldest])
    assert (restored, weight) == ((1, 10), 1.0)
    assert said == [f"[rayseg] checkpoint {newest} is corrupt ({state.stat().st_size} bytes, checksums.json records "
                    f"{state.stat().st_size + 10} (truncated?): state.pt); trying the one before it",
                    f"[rayseg] checkpoint {middle} is corrupt (content does not match its sha256 in checksums.json: "
                    f"model.pt); trying the one before it",
                    f"[rayseg] resuming from the newest intact checkpoint {oldest}"]
    (oldest / STATE_FILE).unlink()
    restored, _, said = _restore([newest, middle, oldest])
    assert restored is None and said[-1] == "[rayseg] no intact checkpoint left; training starts from the beginning"


def test_a_checkpoint_without_checksums_is_checked_when_loaded(tmp_path):
    old = _checkpoint(tmp_path / "epoch_000001", 1, checksums=False)
    broken = _checkpoint(tmp_path / "epoch_000002", 2, checksums=False)
    (broken / STATE_FILE).write_bytes(b"not a torch file")
    restored, weight, said = _restore([broken, old])
    assert (restored, weight) == ((1, 10), 1.0)
    assert said[0].startswith(f"[rayseg] checkpoint {broken} is corrupt (cannot be read (")
