"""PSSL label shards on an object store (moto's S3 server, see conftest) and on a local path: the commit
protocol, the readers, PSSLDataset, show-labels, and one labelling run on the session Ray cluster."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rayseg import storage
from rayseg.commands.label import label_images
from rayseg.commands.show_labels import show_labels
from rayseg.config import ConfigError, ExplainerSection, LabelSection
from rayseg.data.pseudo_labels import PSSLDataset
from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from rayseg.ignore import IGNORE_INDEX
from rayseg.labeling import pipeline, shards
from rayseg.methods.pssl import PSSL
from tests.native_trees import write_labels
from tests.test_pssl import SIZE, K, pssl_config


@pytest.fixture(params=["path", "s3"])
def root(request, tmp_path):
    """A labels root: a local folder or a fresh S3 prefix."""
    if request.param == "path":
        return str(tmp_path / "labels")
    return request.getfixturevalue("s3_uri")


def shard_rows(ids: list[str], bad: tuple[str, ...] = ()) -> list[dict]:
    """Rows as the pipeline hands them to ``commit_shard``: a gradient decile map each, ``bad`` ids failed."""
    png = shards.encode_deciles(np.tile((np.arange(8) * 10 // 8).astype(np.uint8), (8, 1)))
    return [{"id": i, "status": "cannot decode image" if i in bad else "ok", "content_hash": f"{n:064d}",
             "class_index": n % 2, "height": 8, "width": 8, "deciles_png": png} for n, i in enumerate(ids)]


# ------------------------------------------------------------------------------------------- shards


def test_commit_then_read_labels_and_errors(root, monkeypatch):
    version_dir = storage.join(root, "v1")
    written = []
    write_bytes = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda loc, data: written.append(loc) or write_bytes(loc, data))
    planned = [["a/0.png", "a/1.png", "b/2.png"], ["b/3.png", "b/4.png", "c/5.png"]]
    for index, ids in enumerate(planned):
        manifest = shards.commit_shard(version_dir, index, ids, shard_rows(ids, bad=("b/4.png",)), "v1", [],
                                          score=False)
        assert manifest["bytes"] > 0 and written[-1] == shards.manifest_location(version_dir, index)  # last
    assert written == [storage.join(version_dir, n) for n in (
        "shard-00000.parquet", "_manifests/shard-00000.json",
        "shard-00001.parquet", "shard-00001.errors.parquet", "_manifests/shard-00001.json")]
    # a crash before the commit of shard 2: its Parquet file is written, its manifest is not -> invisible
    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        shards.commit_shard(version_dir, 2, ["d/6.png", "d/7.png"], shard_rows(["d/6.png", "d/7.png"]), "v1",
                               [], score=False)
    assert written[-1] == storage.join(version_dir, "shard-00002.parquet")

    manifests = shards.committed_shards(version_dir)
    assert [m["shard"] for m in manifests] == [0, 1] and [m["ids"] for m in manifests] == planned
    assert [(m["rows"], m["errors"]) for m in manifests] == [(3, 0), (2, 1)]
    table = shards.read_labels(version_dir)
    assert table.column("id").to_pylist() == ["a/0.png", "a/1.png", "b/2.png", "b/3.png", "c/5.png"]
    assert table.schema == shards.SCHEMA and set(table.column("label_version").to_pylist()) == {"v1"}
    assert shards.decode_deciles(table.column("deciles_png")[0].as_py()).shape == (8, 8)
    assert shards.read_labels(version_dir, columns=["id", "class_index"]).column_names == ["id", "class_index"]
    errors = shards.read_errors(version_dir)
    assert errors.to_pylist() == [{"id": "b/4.png", "reason": "cannot decode image", "label_version": "v1"}]
    # every name is a final one (no temporary files); total_bytes counts the three shards' Parquet files
    names = storage.list_dir(version_dir)
    assert names == ["_manifests", "shard-00000.parquet", "shard-00001.errors.parquet", "shard-00001.parquet",
                     "shard-00002.parquet"]
    assert storage.list_dir(storage.join(version_dir, "_manifests")) == ["shard-00000.json", "shard-00001.json"]
    assert shards.shard_bytes(version_dir) == sum(len(storage.read_bytes(storage.join(version_dir, n))) for n in names[1:])


def test_readers_of_a_missing_version_are_empty(root):
    missing = storage.join(root, "nothing")
    assert shards.committed_shards(missing) == []
    assert shards.read_labels(missing, columns=["id"]).num_rows == 0
    assert shards.read_errors(missing).schema == shards.ERRORS_SCHEMA
    assert shards.shard_bytes(missing) == 0


def test_clean_tmp_removes_local_leftovers_only(tmp_path, s3_uri):
    version_dir = tmp_path / "v"
    (version_dir / "_manifests").mkdir(parents=True)
    leftovers = [version_dir / "shard-00001.parquet.tmp", version_dir / ".shard-00002.parquet.tmp-4242",
                 version_dir / "_manifests" / ".shard-00002.json.tmp-4242"]
    kept = [version_dir / "shard-00000.parquet", version_dir / "_manifests" / "shard-00000.json"]
    for path in leftovers + kept:
        path.write_bytes(b"x")
    shards.clean_tmp(str(version_dir))
    assert [p.exists() for p in leftovers + kept] == [False] * 3 + [True] * 2
    shards.clean_tmp(storage.join(s3_uri, "v"))  # nothing to clean on an object store, and no error
    with pytest.raises(ValueError, match="not a local folder"):
        shards.manifest_path(s3_uri, 0)


# -------------------------------------------------------------------------------------- PSSL + show


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory):
    """An ImageFolder tree and labels for it (test_pssl's gradient decile maps) in a local version folder."""
    base = tmp_path_factory.mktemp("s3labels")
    images = base / "images"
    write_image_folder(SyntheticClassification(num_images=6, image_size=SIZE, classes=[0, 1, 2]), images)
    write_labels(base / "v-test", images)
    return base / "v-test", images


@pytest.fixture
def s3_labels(local_labels, s3_uri):
    """The same version folder uploaded to S3; returns its URI."""
    version_dir = storage.join(s3_uri, "v-test")
    storage.upload(local_labels[0], version_dir)
    return version_dir


def test_pssl_dataset_reads_labels_from_s3_like_from_a_path(local_labels, s3_labels):
    labels, images = local_labels
    local = PSSLDataset(labels, images, num_classes=K, threshold=8, ignore_d8=True)
    remote = PSSLDataset(s3_labels, images, num_classes=K, threshold=8, ignore_d8=True)
    assert remote.ids == local.ids and len(remote) == 6 and remote.class_names == local.class_names
    for i in range(len(local)):
        a, b = local[i], remote[i]
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        assert set(b["mask"].unique().tolist()) == {local.class_index[i], K, IGNORE_INDEX}
    remote.deciles_png[0] = b"not a png"
    with pytest.raises(ValueError, match="cannot decode the decile map") as err:
        remote[0]
    assert err.value.path == storage.join(s3_labels, remote.ids[0])


def test_pssl_config_accepts_a_labels_uri(local_labels, s3_labels, s3_uri):
    _, images = local_labels
    ds = PSSL.train_dataset(pssl_config(s3_labels, images))
    assert isinstance(ds, PSSLDataset) and len(ds) == 6 and ds[0]["mask"].shape == (32, 32)
    with pytest.raises(ConfigError, match="pssl.labels: folder not found: s3://"):
        PSSL.train_dataset(pssl_config(storage.join(s3_uri, "no-such-version"), images))


def test_show_labels_of_a_uri_version_dir(local_labels, s3_labels, tmp_path, s3_uri):
    _, images = local_labels
    storage.write_text(storage.join(s3_labels, "summary.json"), json.dumps({"images_root": str(images)}))
    out = show_labels(s3_labels, None, tmp_path / "grid.png", count=3)  # image source from summary.json on S3
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.height > 300 and grid.width > 300
    with pytest.raises(FileNotFoundError, match="label version folder not found"):
        show_labels(storage.join(s3_uri, "nothing"), images, tmp_path / "x.png")


# ------------------------------------------------------------------------------------------------ Ray


def test_member_weights_on_s3_load_and_version_like_local_ones(tmp_path, s3_uri):
    from rayseg.labeling.members import check_members, label_version, load_members
    from rayseg.models import build_classifier
    from rayseg.models.weights import WeightsError

    torch.manual_seed(0)
    local = tmp_path / "resnet18.pt"
    torch.save(build_classifier("resnet18", 5).state_dict(), local)
    remote = storage.join(s3_uri, "members", "resnet18.pt")
    storage.upload(local, remote)
    on_s3, on_disk = check_members([("resnet18", remote)], 5), check_members([("resnet18", str(local))], 5)
    (a,), (b,) = load_members(on_s3, 5), load_members(on_disk, 5)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    cfg = ExplainerSection(samples=2)
    assert label_version(on_s3, cfg, 32, 5) == label_version(on_disk, cfg, 32, 5)  # the same bytes, the same labels
    with pytest.raises(WeightsError, match="resnet18: weights file not found: s3://"):
        check_members([("resnet18", storage.join(s3_uri, "members", "nope.pt"))], 5)


def test_labeling_into_s3_resumes_and_reruns_without_work(ray_cluster, tmp_path, s3_uri, monkeypatch):
    images = tmp_path / "images"
    write_image_folder(SyntheticClassification(num_images=16, image_size=32, classes=[0, 1]), images)
    job = LabelSection(images=str(images), output=s3_uri, members=["resnet18"], num_classes=2,
                       explainer=ExplainerSection(samples=2), input_size=32, shard_size=8, batch_size=8,
                       allow_random_weights=True)
    first = label_images(job)
    version_dir = first["version_dir"]
    assert version_dir == storage.join(s3_uri, first["label_version"])
    assert first["shards"] == first["shards_done"] == 2 and first["total_rows"] == first["labelled"] == 16
    assert first["total_bytes"] == first["output_bytes"] > 0
    assert json.loads(storage.read_text(storage.join(version_dir, "summary.json"))) == first
    table = shards.read_labels(version_dir)
    expected = sorted(p.relative_to(images).as_posix() for p in images.rglob("*.png"))
    assert sorted(table.column("id").to_pylist()) == expected  # every image exactly once
    for row in table.to_pylist():
        assert row["content_hash"] == hashlib.sha256((images / row["id"]).read_bytes()).hexdigest()
        assert shards.decode_deciles(row["deciles_png"]).max() == 9

    # a crash before the commit of shard 1 (no manifest): the re-run redoes that shard only
    fs, path = storage.resolve(shards.manifest_location(version_dir, 1))
    fs.delete_file(path)
    resumed = label_images(job)
    assert resumed["shards_done"] == resumed["shards_skipped"] == 1 and resumed["new_images"] == 8
    assert sorted(shards.read_labels(version_dir, columns=["id"]).column("id").to_pylist()) == expected

    monkeypatch.setattr(pipeline, "_run_pipeline", lambda *a, **k: pytest.fail("a finished job ran the pipeline"))
    again = label_images(job)
    assert again["shards_skipped"] == again["shards"] == 2 and again["shards_done"] == again["new_images"] == 0
    assert again["total_rows"] == 16 and again["version_dir"] == version_dir
    assert sorted(shards.read_labels(version_dir, columns=["id"]).column("id").to_pylist()) == expected
    assert json.loads(storage.read_text(storage.join(version_dir, "summary.json")))["shards_skipped"] == 2
