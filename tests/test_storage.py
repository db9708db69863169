"""rayseg.storage on a local path and on a real S3 endpoint (moto's server, see conftest)."""

from __future__ import annotations

import os

import pytest

from rayseg import storage


@pytest.fixture(params=["path", "s3"])
def root(request, tmp_path):
    if request.param == "path":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_uri")


def test_is_uri_and_join_keep_the_options():
    uri = "s3://bucket/runs?region=eu-west-1&endpoint_override=minio:9000"
    assert storage.is_uri(uri) and storage.is_uri("gs://b/x") and storage.is_uri("file:///tmp/x")
    assert not storage.is_uri("/tmp/x") and not storage.is_uri("runs") and not storage.is_uri("C://x")
    assert storage.join(uri, "a", "b.json") == "s3://bucket/runs/a/b.json?region=eu-west-1&endpoint_override=minio:9000"
    assert storage.basename(storage.join(uri, "a")) == "a"
    assert storage.parent(storage.join(uri, "a")) == uri
    assert storage.join("runs", "a") == os.path.join("runs", "a")
    assert storage.absolute("runs") == os.path.abspath("runs") and storage.absolute(uri) == uri


def test_unknown_scheme_is_one_clear_error():
    with pytest.raises(ValueError, match="nosuch://x: pyarrow cannot open this URI"):
        storage.resolve("nosuch://x")


def test_write_read_list_and_delete(root):
    target = storage.join(root, "run", "metrics.json")
    assert not storage.exists(target) and not storage.is_dir(storage.join(root, "run"))
    assert storage.write_text(target, '{"miou": 0.5}') == 13
    assert storage.read_text(target) == '{"miou": 0.5}'
    assert storage.is_file(target) and storage.file_sizes(storage.join(root, "run")) == {"metrics.json": 13}
    assert storage.is_dir(storage.join(root, "run")) and not storage.is_file(storage.join(root, "run"))
    storage.write_bytes(storage.join(root, "run", "b.bin"), b"\x00\x01")
    assert storage.list_dir(storage.join(root, "run")) == ["b.bin", "metrics.json"]
    assert storage.list_dir(storage.join(root, "missing")) == []
    storage.write_text(target, "replaced")
    assert storage.read_text(target) == "replaced"
    storage.delete(storage.join(root, "run", "b.bin"))
    assert storage.list_dir(storage.join(root, "run")) == ["metrics.json"]
    storage.delete(storage.join(root, "run"))
    assert not storage.exists(target) and storage.list_dir(storage.join(root, "run")) == []
    storage.delete(storage.join(root, "run"))  # again: nothing there, no error


def test_upload_download_round_trip(root, tmp_path):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "deep" / "b.txt").write_text("bb")
    storage.upload(src, storage.join(root, "tree"))
    assert storage.list_dir(storage.join(root, "tree")) == ["a.txt", "deep"]
    assert storage.read_text(storage.join(root, "tree", "deep", "b.txt")) == "bb"
    out = tmp_path / "out"
    assert storage.download(storage.join(root, "tree"), out)
    assert (out / "a.txt").read_text() == "a" and (out / "deep" / "b.txt").read_text() == "bb"
    assert not storage.download(storage.join(root, "nothing"), tmp_path / "none")
    readable = storage.readable(storage.join(root, "tree", "a.txt"))
    assert (readable.read() if storage.is_uri(root) else open(readable, "rb").read()) == b"a"
