"""The CPU stages of the labelling pipeline (:mod:`rayseg.labeling.pipeline`): decode + resize before the
explainer actors, PNG-encode + score after them.

Ray Data runs these functions in its task workers. They need numpy, Pillow and pyarrow only: importing this
module does not import torch (``rayseg.labeling`` loads its torch parts lazily), so a task worker starts in
a fraction of a second instead of the ~2 s torch's import takes on a small machine.
"""

from __future__ import annotations

import bisect
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from rayseg.labeling import shards
from rayseg.labeling.geometry import NO_DECILE, deciles_on_image, fit_image

__all__ = ["decode_and_resize", "decode_parquet_rows", "encode_and_score"]


def decode_and_resize(batch: dict, images_root: str, input_size: int, geometry: str) -> dict:
    """CPU stage: read, hash, decode (RGB) and resize every image, kept as uint8 ``[n, 3, S, S]``: the explainer
    actor normalises on its own device (a quarter of the bytes through the object store and to the GPU). A file
    that cannot be read or decoded becomes a row with ``status`` = the reason (never an exception)."""
    contents: list = []
    for rel in batch["id"]:
        try:
            contents.append((Path(images_root) / str(rel)).read_bytes())
        except OSError as exc:
            contents.append(f"{rel}: cannot read file ({type(exc).__name__}: {exc.strerror or exc})")
    return _decode_rows(batch["id"], batch["shard"], batch["class_index"], contents, input_size, geometry)


def new_shard_of(image_id: str, shard_starts: list[str], shard_indices: list[int], skip: set[str]) -> int | None:
    """The shard still to do that a table row belongs to, by bisecting the sorted first ids of those shards
    (:func:`rayseg.labeling.pipeline.parquet_lookup`); None for a row committed already."""
    k = bisect.bisect_right(shard_starts, image_id) - 1
    return None if k < 0 or image_id in skip else int(shard_indices[k])


def decode_parquet_rows(batch: dict, shard_starts: list[str], shard_indices: list[int], skip_ids: list[str],
                        input_size: int, geometry: str) -> dict:
    """CPU stage for Parquet input: ``batch`` has the table's ``id``, ``image`` (bytes) and ``label`` columns.
    Each row's new shard is found by bisecting ``shard_starts`` (the first id of each shard to label, sorted;
    its index in ``shard_indices``); rows before the first one or in ``skip_ids`` are committed already and
    dropped. Then as :func:`decode_and_resize`: sha256 of the bytes, decode, resize; null or
    undecodable bytes become a row with ``status`` = the reason."""
    skip = set(skip_ids)
    ids, shard, labels, contents = [], [], [], []
    for rel, data, label in zip(batch["id"], batch["image"], batch["label"]):
        rel = str(rel)
        k = new_shard_of(rel, shard_starts, shard_indices, skip)
        if k is None:
            continue
        ids.append(rel)
        shard.append(k)
        labels.append(int(label))
        contents.append(f"{rel}: no image bytes (null)" if data is None else bytes(data))
    return _decode_rows(ids, shard, labels, contents, input_size, geometry)


def _decode_rows(ids, shard, class_index, contents: list, input_size: int, geometry: str) -> dict:
    """``contents[i]``: the encoded bytes of image ``ids[i]``, or a str = the reason it has none."""
    n = len(ids)
    images = np.zeros((n, 3, input_size, input_size), np.uint8)
    hashes, status = [], []
    for i, (rel, data) in enumerate(zip(ids, contents)):
        if isinstance(data, str):
            hashes.append("")
            status.append(data)
            continue
        hashes.append(hashlib.sha256(data).hexdigest())
        try:
            with Image.open(io.BytesIO(data)) as img:
                rgb = img.convert("RGB")  # forces the decode of the whole file
            rgb = fit_image(rgb, input_size, geometry)
        except Exception as exc:  # PIL raises many types for corrupt data
            msg = str(exc).splitlines()[0] if str(exc) else ""
            status.append(f"{rel}: cannot decode image ({type(exc).__name__}: {msg})")
            continue
        images[i] = np.asarray(rgb, np.uint8).transpose(2, 0, 1)
        status.append("ok")
    return {
        "id": np.asarray([str(i) for i in ids], dtype=object),
        "shard": np.asarray(shard, np.int64),
        "class_index": np.asarray(class_index, np.int64),
        "content_hash": np.asarray(hashes, dtype=object),
        "status": np.asarray(status, dtype=object),
        "image": images,
    }


def _iou(pred: np.ndarray, true: np.ndarray) -> float:
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def read_true_mask(true_masks: str, image_id: str) -> np.ndarray | None:
    """The true object mask of ``image_id`` (``<true_masks>/<id>.png``, > 127 = object), None when unreadable."""
    try:
        with Image.open((Path(true_masks) / image_id).with_suffix(".png")) as img:
            return np.asarray(img.convert("L")) > 127
    except (OSError, ValueError):
        return None


def top_decile_iou(deciles: np.ndarray, true: np.ndarray, geometry: str, threshold: int = 9) -> float:
    """IoU of ``deciles >= threshold``, laid back on the true mask's pixels with ``geometry`` (unexplained pixels
    count as background), with the true mask."""
    on_image = deciles_on_image(deciles, true.shape[0], true.shape[1], geometry)
    return _iou((on_image >= threshold) & (on_image != NO_DECILE), true)


def encode_and_score(batch: dict, true_masks: str, geometry: str) -> dict:
    """CPU stage: PNG-encode the decile maps; with ``true_masks`` also the IoU of the top-decile mask (ensemble,
    then each member; laid back on the true mask's pixels with ``geometry``, where unexplained pixels count as
    background) with the true mask (NaN when unavailable)."""
    dec = batch.pop("deciles")
    member_top = batch.pop("member_top")
    n, m = member_top.shape[:2]
    pngs, iou = [], np.full((n, m + 1), np.nan, np.float32)
    for i in range(n):
        if batch["status"][i] != "ok":
            pngs.append(b"")
            continue
        pngs.append(shards.encode_deciles(dec[i]))
        if not true_masks:
            continue
        true = read_true_mask(true_masks, str(batch["id"][i]))
        if true is None:
            continue
        maps = [dec[i]] + [member_top[i, k] * 9 for k in range(m)]  # a member's top-decile mask as deciles 0 / 9
        for k, deciles in enumerate(maps):
            iou[i, k] = top_decile_iou(deciles, true, geometry)
    batch["deciles_png"] = np.asarray(pngs, dtype=object)
    batch["height"] = np.full(n, dec.shape[1], np.int32)
    batch["width"] = np.full(n, dec.shape[2], np.int32)
    batch["iou"] = iou
    return batch
