"""The pseudo-label shard format (PSSL): Parquet files written with pyarrow, readable without Ray.

Layout under the labeling output root::

    <root>/<label_version>/shard-00007.parquet        one row per labelled image (SCHEMA)
    <root>/<label_version>/shard-00007.errors.parquet images of the shard that could not be labelled (ERRORS_SCHEMA)
    <root>/<label_version>/_manifests/shard-00007.json  written last: the shard is committed

A shard counts only once its manifest exists; the manifest names the shard's files and row counts and the ids it
was planned with, so a re-run skips committed shards and a crash mid-run leaves no half shard visible.
``label_version`` hashes everything that changes the labels (models, explainer settings, code version), so runs
with different settings never mix.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

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


def manifest_path(version_dir: str | os.PathLike, index: int) -> Path:
    return Path(version_dir) / MANIFEST_DIR / f"{shard_name(index)}.json"


def committed_shards(version_dir: str | os.PathLike) -> list[dict]:
    """The manifests of committed shards, in shard order."""
    folder = Path(version_dir) / MANIFEST_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("shard-*.json"))]


def write_manifest(version_dir: str | os.PathLike, index: int, manifest: dict) -> None:
    """Commit a shard: atomically write its manifest (after its Parquet files are complete)."""
    path = manifest_path(version_dir, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def read_labels(version_dir: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All rows of the committed shards of one label version (an empty table with SCHEMA when none)."""
    version_dir = Path(version_dir)
    files = [version_dir / m["labels_file"] for m in committed_shards(version_dir)]
    if not files:
        return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
    return pa.concat_tables([pq.read_table(f, columns=columns, schema=SCHEMA) for f in files])


def read_errors(version_dir: str | os.PathLike) -> pa.Table:
    version_dir = Path(version_dir)
    files = [version_dir / m["errors_file"] for m in committed_shards(version_dir) if m.get("errors_file")]
    if not files:
        return ERRORS_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f, schema=ERRORS_SCHEMA) for f in files])
