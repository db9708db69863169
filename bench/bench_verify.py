"""What verified outputs cost a labelling re-run, against reading the same files without checking them.

A label version of ``--shards`` committed shards of ``--rows`` images each (decile maps at ``--size`` px, smooth
like real ones, PNG-encoded) is written with :func:`rayseg.labeling.shards.commit_shard`. Then, interleaved over
``--rounds`` rounds (page cache warm, as on a re-run right after a kill):

- baseline: list the manifests, read and parse each, read every shard file's bytes (what a re-run without checks
  would read at the least);
- verified: :func:`rayseg.labeling.shards.scan_shards` (manifest checksums, sizes from one listing, sha256 of every
  shard file);
- the quick check of changed images: ``image_stamps`` (one ``stat`` per image file) on ``--images`` files.

Ray-free. Prints one JSON line per measure and writes ``--out``.

    python bench/bench_verify.py --shards 200 --rows 64 --size 224 --images 20000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayseg import storage  # noqa: E402
from rayseg.labeling import shards  # noqa: E402
from rayseg.labeling.pipeline import image_stamps  # noqa: E402


def smooth_deciles(rng: np.random.Generator, size: int) -> np.ndarray:
    coarse = rng.random((size // 4 + 1, size // 4 + 1))  # 4 px blobs: SmoothGrad maps at 224 px are about as busy
    field = np.kron(coarse, np.ones((4, 4)))[:size, :size] + 0.3 * rng.random((size, size))
    ranks = field.ravel().argsort().argsort().reshape(field.shape)
    return (ranks * 10 // ranks.size).astype(np.uint8)


def write_version(root: Path, num_shards: int, rows: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    pngs = [shards.encode_deciles(smooth_deciles(rng, size)) for _ in range(16)]
    for index in range(num_shards):
        ids = [f"n{index:05d}/{j:04d}.JPEG" for j in range(rows)]
        batch = [{"id": i, "status": "ok", "content_hash": "0" * 64, "class_index": 0, "height": size, "width": size,
                  "deciles_png": pngs[(index + j) % len(pngs)]} for j, i in enumerate(ids)]
        shards.commit_shard(str(root), index, ids, batch, "v", [], False, stamps=[[1, 1]] * rows)
    return root


def read_without_checks(root: Path) -> int:
    total = 0
    for manifest in [json.loads(p.read_text()) for p in sorted((root / shards.MANIFEST_DIR).glob("shard-*.json"))]:
        total += len(storage.read_bytes(root / manifest["labels_file"]))
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=200)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = write_version(Path(tmp) / "v", args.shards, args.rows, args.size)
        data_bytes = shards.shard_bytes(str(root))
        image_root = Path(tmp) / "images"
        ids = [f"c{i % 100:03d}/{i:06d}.jpg" for i in range(args.images)]
        for i in ids:
            (image_root / i).parent.mkdir(parents=True, exist_ok=True)
            (image_root / i).write_bytes(b"x" * 64)
        base, verified, stamps = [], [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            read_without_checks(root)
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            intact, corrupt = shards.scan_shards(str(root))
            verified.append(time.perf_counter() - t)
            assert len(intact) == args.shards and not corrupt
            t = time.perf_counter()
            image_stamps(str(image_root), ids)
            stamps.append(time.perf_counter() - t)

    images = args.shards * args.rows
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "shards": args.shards, "images": images, "size": args.size, "shard_bytes": data_bytes,
        "bytes_per_image": round(data_bytes / images, 1),
        "read_without_checks_s": round(statistics.median(base), 4),
        "verified_scan_s": round(statistics.median(verified), 4),
        "verified_over_plain_read": round(statistics.median(verified) / statistics.median(base), 2),
        "verified_mb_per_s": round(data_bytes / statistics.median(verified) / 1e6, 1),
        "verified_us_per_image": round(1e6 * statistics.median(verified) / images, 2),
        "stat_us_per_image": round(1e6 * statistics.median(stamps) / args.images, 2),
    }
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
