"""The pseudo-label shard format (PSSL): Parquet files written with pyarrow, readable without Ray.

Layout under the labeling output root::

    <root>/<label_version>/shard-00007.parquet        one row per labelled image (SCHEMA)
    <root>/<label_version>/shard-00007.errors.parquet images of the shard that could not be labelled (ERRORS_SCHEMA)
    <root>/<label_version>/_manifests/shard-00007.json  written last: the shard is committed

:func:`commit_shard` writes a shard (its files, then the manifest); :func:`committed_shards`,
:func:`read_labels` and :func:`read_errors` read them. A shard counts only once its manifest exists; the manifest
names the shard's files and row counts, the ids it was planned with and the geometry they were explained with, so a
re-run skips committed shards and a crash mid-run leaves no half shard visible.

Verified: the manifest records the size and sha256 of each of its files (``files``) and a sha256 of its own
content (``sha256``). Readers check both and raise :class:`CorruptShardError` naming the file; a re-run
(:func:`scan_shards`) finds every corrupt shard, and the labelling job removes it and labels its images again.
``label_version`` hashes everything that changes the labels (models, explainer settings, code version), so runs
with different settings never mix.

``<root>`` is a location of :mod:`rayseg.storage`: a local path or an object-store URI (``s3://...``). Every file
is written in one atomic step (:func:`rayseg.storage.write_bytes`), so a reader sees a manifest or a shard file
whole or not at all. Readers fetch the files of many shards concurrently (object stores answer each request in
tens of milliseconds; a label version holds thousands of shards).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from rayseg import storage

SCHEMA = pa.schema([
    ("id", pa.string()),              # stable image id: path relative to the dataset root
    ("content_hash", pa.string()),    # sha256 hex of the image file's bytes
    ("class_index", pa.int32()),      # the image's class (0..K-1)
    ("height", pa.int32()),           # size of the decile map (= the explained input)
    ("width", pa.int32()),
    ("deciles_png", pa.binary()),     # PNG-encoded uint8 HxW, values 0..9
    ("label_version", pa.string()),
])

ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("reason", pa.string()), ("label_version", pa.string())])

MANIFEST_DIR = "_manifests"


class CorruptShardError(ValueError):
    """A committed label shard's manifest or file that does not match what was recorded (truncated, changed,
    missing). The message starts with the file's location and says how to repair it."""

    def __init__(self, location: str, reason: str):
        self.location, self.reason = location, reason
        super().__init__(f"{location}: {reason}; re-run `rayseg label` with the same config to label this shard's "
                         f"images again")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def encode_deciles(deciles: np.ndarray) -> bytes:
    """uint8 HxW decile map (0..9) -> PNG bytes (lossless, ~1 byte per 10-30 pixels for smooth maps)."""
    array = np.asarray(deciles)
    if array.dtype != np.uint8 or array.ndim != 2 or array.size == 0 or int(array.max()) > 9:
        raise ValueError(f"deciles must be a non-empty uint8 HxW array with values 0..9, got {array.dtype} "
                         f"{array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def decode_deciles(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def manifest_location(version_dir: str | os.PathLike, index: int) -> str:
    """Location of shard ``index``'s manifest (``<version_dir>/_manifests/shard-XXXXX.json``)."""
    return storage.join(version_dir, MANIFEST_DIR, f"{shard_name(index)}.json")


def manifest_path(version_dir: str | os.PathLike, index: int) -> Path:
    """:func:`manifest_location` as a ``Path``, for a local version folder only."""
    if storage.is_uri(version_dir):
        raise ValueError(f"{version_dir}: not a local folder; use manifest_location")
    return Path(manifest_location(version_dir, index))


_T = TypeVar("_T")
_READERS = 16  # concurrent reads of one listing (object-store requests are latency-bound)


def _read_all(read: Callable[[str], _T], locations: Iterable[str]) -> list[_T]:
    """``[read(location) ...]`` in order, up to ``_READERS`` at a time."""
    locations = list(locations)
    if len(locations) <= 1:
        return [read(location) for location in locations]
    with ThreadPoolExecutor(max_workers=min(_READERS, len(locations))) as pool:
        return list(pool.map(read, locations))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest's content without its own ``sha256`` field (keys sorted, so any order checks)."""
    content = {k: v for k, v in manifest.items() if k != "sha256"}
    return _digest(json.dumps(content, sort_keys=True).encode("utf-8"))


def _parse_manifest(location: str, text: str) -> dict:
    """A manifest's JSON, checked against its ``sha256``; ``CorruptShardError`` naming it otherwise. Manifests of
    rayseg versions that did not record checksums are taken as they are."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise CorruptShardError(location, f"manifest is not valid JSON ({exc.args[0] if exc.args else exc})") from None
    if not isinstance(manifest, dict) or not {"shard", "labels_file", "ids"} <= set(manifest):
        raise CorruptShardError(location, "manifest lacks shard, labels_file or ids")
    if "sha256" in manifest and manifest["sha256"] != _manifest_digest(manifest):
        raise CorruptShardError(location, "manifest content does not match its sha256")
    return manifest


def _manifest_locations(version_dir: str | os.PathLike) -> list[str]:
    folder = storage.join(version_dir, MANIFEST_DIR)
    return [storage.join(folder, n) for n in storage.list_dir(folder) if fnmatch.fnmatchcase(n, "shard-*.json")]


def committed_shards(version_dir: str | os.PathLike) -> list[dict]:
    """The manifests of committed shards, in shard order; ``CorruptShardError`` on the first that is corrupt."""
    return _read_all(lambda location: _parse_manifest(location, storage.read_text(location)),
                     _manifest_locations(version_dir))


def _size_mismatch(size: int, record: dict) -> str:
    return f"{size} bytes, its manifest records {record['bytes']} (truncated or overwritten)"


def check_file(location: str, data: bytes, record: dict | None) -> bytes:
    """``data`` (the bytes read from ``location``) if they match ``record`` (``{"bytes", "sha256"}``, None for
    shards written without one); ``CorruptShardError`` naming the file otherwise."""
    if record is not None:
        if len(data) != record["bytes"]:
            raise CorruptShardError(location, _size_mismatch(len(data), record))
        if _digest(data) != record["sha256"]:
            raise CorruptShardError(location, "content does not match the sha256 its manifest records")
    return data


def shard_files(manifest: dict) -> list[str]:
    """The Parquet files of one committed shard (labels, and errors when there are any)."""
    return [manifest["labels_file"]] + ([manifest["errors_file"]] if manifest.get("errors_file") else [])


def scan_shards(version_dir: str | os.PathLike) -> tuple[list[dict], dict[str, str]]:
    """Every manifest of ``version_dir``, verified with its files (sizes from one listing, then the sha256 of each
    file). Returns (the intact shards' manifests in shard order, ``{shard name: "<bad file>: <reason>"}`` of the
    corrupt ones)."""
    sizes = storage.file_sizes(version_dir)

    def scan(location: str) -> tuple[str, dict | None, str | None]:
        name = storage.basename(location)[:-len(".json")]
        try:
            manifest = _parse_manifest(location, storage.read_text(location))
            for file in shard_files(manifest):
                file_location, record = storage.join(version_dir, file), manifest.get("files", {}).get(file)
                if file not in sizes:
                    raise CorruptShardError(file_location, "missing")
                if record is not None and sizes[file] != record["bytes"]:  # cheap first: no read
                    raise CorruptShardError(file_location, _size_mismatch(sizes[file], record))
                if record is not None:
                    check_file(file_location, storage.read_bytes(file_location), record)
            return name, manifest, None
        except CorruptShardError as exc:
            return name, None, f"{exc.location}: {exc.reason}"

    intact, corrupt = [], {}
    for name, manifest, reason in _read_all(scan, _manifest_locations(version_dir)):
        if manifest is None:
            corrupt[name] = reason
        else:
            intact.append(manifest)
    return intact, corrupt


def discard_shard(version_dir: str | os.PathLike, name: str) -> None:
    """Remove a (corrupt) shard: its manifest first, so it is uncommitted before its files go."""
    storage.delete(storage.join(version_dir, MANIFEST_DIR, f"{name}.json"))
    for file in (f"{name}.parquet", f"{name}.errors.parquet"):
        storage.delete(storage.join(version_dir, file))


def write_manifest(version_dir: str | os.PathLike, index: int, manifest: dict) -> None:
    """Commit a shard: atomically write its manifest (after its Parquet files are complete), with its sha256."""
    manifest = {**manifest, "sha256": _manifest_digest(manifest)}
    storage.write_text(manifest_location(version_dir, index), json.dumps(manifest, indent=1))


def _read_tables(version_dir: str | os.PathLike, files: list[tuple[str, dict | None]], schema: pa.Schema,
                 columns: list[str] | None = None) -> pa.Table:
    """The Parquet files ``files`` (name, size/sha256 record) of ``version_dir`` as one table (an empty one with
    ``schema`` when none), each verified against its record first; only ``columns`` are decoded."""
    empty = schema.empty_table()
    if not files:
        return empty if columns is None else empty.select(columns)

    def read(file: tuple[str, dict | None]) -> pa.Table:
        location = storage.join(version_dir, file[0])
        data = check_file(location, storage.read_bytes(location), file[1])
        try:
            return pq.read_table(pa.BufferReader(data), columns=columns, schema=schema)
        except (pa.ArrowException, OSError) as exc:  # unverified (old) shards only: a verified file parses
            raise CorruptShardError(location, f"not a readable Parquet file ({exc})") from None

    return pa.concat_tables(_read_all(read, files))


def _files_of(manifests: list[dict], key: str) -> list[tuple[str, dict | None]]:
    return [(m[key], m.get("files", {}).get(m[key])) for m in manifests if m.get(key)]


def read_labels(version_dir: str | os.PathLike, columns: list[str] | None = None,
                manifests: list[dict] | None = None) -> pa.Table:
    """All rows of the committed shards of one label version (an empty table with SCHEMA when none);
    ``manifests``: the committed shards' manifests when already read."""
    manifests = committed_shards(version_dir) if manifests is None else manifests
    return _read_tables(version_dir, _files_of(manifests, "labels_file"), SCHEMA, columns)


def geometry_of(manifests: list[dict]) -> str:
    """The ``label.geometry`` the shards were explained with (``square`` for shards written before it was
    recorded); ``ValueError`` if the shards disagree."""
    found = {m.get("geometry", "square") for m in manifests}
    if len(found) > 1:
        raise ValueError(f"label shards with different geometries {sorted(found)}")
    return found.pop() if found else "square"


def read_errors(version_dir: str | os.PathLike) -> pa.Table:
    """The error rows (id, reason) of the committed shards of one label version."""
    return _read_tables(version_dir, _files_of(committed_shards(version_dir), "errors_file"), ERRORS_SCHEMA)


# --------------------------------------------------------------------------------------------------- writer


def _write_table(table: pa.Table, location: str) -> dict:
    """Write ``table`` as one Parquet file at ``location``, atomically; returns its record (bytes, sha256)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    data = memoryview(buffer.getvalue())
    return {"bytes": storage.write_bytes(location, data), "sha256": _digest(data)}


def commit_shard(version_dir: str, index: int, planned: list[str], rows: list[dict], version: str,
                 names: list[str], score: bool, geometry: str = "square",
                 stamps: list[list[int]] | None = None) -> dict:
    """Write one shard's Parquet files, then its manifest (the commit) into ``version_dir`` (a location).
    ``stamps``: ``[size, mtime_ns]`` of each planned image file, in ``planned`` order (ImageFolder input), so that
    a re-run can tell which images changed. Returns the manifest (plus ``bytes`` written)."""
    rows = sorted(rows, key=lambda r: r["id"])
    good = [r for r in rows if r["status"] == "ok"]
    bad = [r for r in rows if r["status"] != "ok"]
    name = shard_name(index)
    labels = pa.Table.from_pydict({
        "id": [r["id"] for r in good],
        "content_hash": [r["content_hash"] for r in good],
        "class_index": [int(r["class_index"]) for r in good],
        "height": [int(r["height"]) for r in good],
        "width": [int(r["width"]) for r in good],
        "deciles_png": [bytes(r["deciles_png"]) for r in good],
        "label_version": [version] * len(good),
    }, schema=SCHEMA)
    files = {f"{name}.parquet": _write_table(labels, storage.join(version_dir, f"{name}.parquet"))}
    errors_file = None
    if bad:
        errors_file = f"{name}.errors.parquet"
        errors = pa.Table.from_pydict({"id": [r["id"] for r in bad], "reason": [r["status"] for r in bad],
                                       "label_version": [version] * len(bad)}, schema=ERRORS_SCHEMA)
        files[errors_file] = _write_table(errors, storage.join(version_dir, errors_file))
    manifest = {"shard": index, "labels_file": f"{name}.parquet", "errors_file": errors_file, "rows": len(good),
                "errors": len(bad), "ids": planned, "label_version": version, "geometry": geometry, "files": files}
    if stamps is not None:
        manifest["stamps"] = stamps
    if score:
        ious = np.asarray([r["iou"] for r in good], np.float64).reshape(-1, len(names) + 1)
        scored = ~np.isnan(ious).any(axis=1)
        ious = ious[scored]
        manifest["iou"] = {"count": int(len(ious)), "ensemble_sum": float(ious[:, 0].sum()),
                           "members_sum": {nm: float(ious[:, k + 1].sum()) for k, nm in enumerate(names)},
                           # per image (ensemble, then each member): paired comparisons (rayseg claims)
                           "images": {r["id"]: [round(float(v), 5) for v in row]
                                      for r, row in zip((r for r, ok in zip(good, scored) if ok), ious)}}
    write_manifest(version_dir, index, manifest)
    return {**manifest, "bytes": sum(record["bytes"] for record in files.values())}


def pseudo_mask_ious(version_dir: str) -> tuple[list[str], dict[str, list[float]]]:
    """Per-image IoU of the top-decile mask with the true mask, from the committed manifests of a label version
    labelled with ``label.true_masks``: (member names, ``{image id: [ensemble, member 1, ...]}``)."""
    names: list[str] = []
    images: dict[str, list[float]] = {}
    for manifest in committed_shards(version_dir):
        iou = manifest.get("iou") or {}
        names = names or list(iou.get("members_sum", {}))
        images.update(iou.get("images", {}))
    return names, images


def shard_bytes(version_dir: str) -> int:
    """Total size of the ``shard-*.parquet`` files (labels and errors) in ``version_dir``."""
    sizes = storage.file_sizes(version_dir)
    return sum(size for name, size in sizes.items() if fnmatch.fnmatchcase(name, "shard-*.parquet"))


# Leftovers of a killed local run: ``*.tmp`` (earlier rayseg versions) and storage.write_bytes' ``.<name>.tmp-<pid>``.
_TMP_PATTERNS = ("*.tmp", ".*.tmp-*")


def clean_tmp(version_dir: str) -> None:
    """Remove the temporary files a killed run left in a local version folder. On an object store there are
    none: an object appears only when its upload completes."""
    if storage.is_uri(version_dir):
        return
    for folder in (Path(version_dir), Path(version_dir) / MANIFEST_DIR):
        if folder.is_dir():
            for tmp in folder.iterdir():
                if any(fnmatch.fnmatchcase(tmp.name, p) for p in _TMP_PATTERNS) and tmp.is_file():
                    tmp.unlink(missing_ok=True)
