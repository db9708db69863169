"""The PSSL labelling job on Ray Data: ImageFolder or Parquet table -> explanation-ensemble deciles -> committed
Parquet shards.

Stages of the one streaming pipeline (over the images of every shard still to do)::

    from_items(id, shard, class_index)                             driver, deterministic shard plan
      (Parquet input: read_parquet(id, image, label)               read tasks; see below)
      -> map_batches(decode_and_resize)        CPU tasks            bytes, sha256, PIL decode (RGB), resize to
                                                                    input_size x input_size, uint8; a bad file
                                                                    becomes a row with ``status`` = the reason
      -> map_batches(ExplainActor)             actor pool           members loaded once per actor;
                                               (explainer_pool: num_actors actors, each call on the actor's
                                               main thread; num_gpus per actor,
                                               fractions allowed, CPU when 0 / no CUDA); ImageNet
                                               normalisation, noise, explain_ensemble and deciles on the
                                               actor's device for the ok rows; only the uint8 deciles and
                                               per-member top-decile masks come back
      -> map_batches(encode_and_score)         CPU tasks            PNG-encode deciles; IoU with true masks
      -> iter_batches on the driver                                 rows buffered per shard (they may arrive
                                                                    in any order); a shard is written when
                                                                    all its planned rows are in

Commit protocol (see :mod:`rayseg.labeling.shards`): ``shard-XXXXX.parquet`` and ``shard-XXXXX.errors.parquet``
are written atomically (:func:`rayseg.storage.write_bytes`: a temporary name renamed on a local path, one upload on
an object store), then the manifest is written last, the same way. A re-run skips shards with a manifest, removes
stale temporary files (local output only: an object store has none) and re-does only the uncommitted shards, so a
killed run followed by a re-run labels every image exactly once; re-running a finished job starts no Ray work.
The output (``label.output``) is a :mod:`rayseg.storage` location: a path or a URI such as ``s3://...``.

Images are explained at ``input_size x input_size`` as ``label.geometry`` places them
(:mod:`rayseg.labeling.geometry`: centre crop of the shorter side by default, aspect kept): the decile maps have
that size, and every manifest records the geometry so that readers lay the map back onto the image. Noise of
SmoothGrad is drawn from a generator seeded by ``seed`` and the ids of the batch, so a run is reproducible for a
given batching.

Parquet input (``images_parquet``: a file or a folder of files with columns ``id`` string, ``image`` binary =
encoded image bytes, ``label`` int = class index): the driver reads only ``id`` and ``label`` (pyarrow) to build
the same sorted-id shard plan; the pipeline then starts with ``ray.data.read_parquet`` (the bytes are read by
Ray's read tasks, streamed, never through the driver) and :func:`decode_parquet_rows` replaces
:func:`decode_and_resize`. It finds each row's shard by bisecting the sorted first ids of the planned shards
(the plan is chunks of the sorted ids, so that is exact; only ``len(plan)`` strings are shipped to the tasks,
not an id -> shard map) and drops the rows of shards already committed. Ids must be unique and non-empty.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from rayseg import storage
from rayseg.config import ConfigError, LabelSection, output_location
from rayseg.labeling import shards
from rayseg.labeling.actor import ExplainActor
from rayseg.labeling.members import Member, check_members, label_version, member_names
from rayseg.labeling.stages import decode_and_resize, decode_parquet_rows, encode_and_score
from rayseg.models.weights import WeightsError
from rayseg.tables import format_duration

__all__ = ["ExplainActor", "LabelingPlan", "actors_for_cluster", "check_cpu_budget", "decode_and_resize",
           "decode_parquet_rows", "encode_and_score", "list_images", "list_parquet_images", "plan_labeling",
           "plan_shards", "run_labeling"]


@dataclass
class LabelingPlan:
    """What the driver resolves from the ``label`` section before Ray starts (:func:`plan_labeling`): the image
    ids and their classes, the class count (``label.num_classes``, or the number of class folders), the checked
    members, the label version and its folder, the shards (index -> ids: the committed ones as their manifests
    record them, then the new ones), the shards not yet committed and the committed ids no longer listed."""

    ids: list[str]
    class_of: dict[str, int]
    num_classes: int
    members: list[Member]
    version: str
    version_dir: str
    shards: dict[int, list[str]]
    todo: list[int]
    removed: list[str]
    discarded: dict[str, str]
    stamps: dict[str, list[int]]


# --------------------------------------------------------------------------------------------------- planning


def list_images(root: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Sorted relative paths (posix) of all image files under ``root/<class>/`` and the class index of each."""
    from rayseg.data.folders import IMAGE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root}: no class folders (expected root/<class>/<image>)")
    class_of = {}
    for index, name in enumerate(classes):
        for dirpath, _, files in os.walk(root / name, followlinks=True):
            for f in files:
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    class_of[(Path(dirpath) / f).relative_to(root).as_posix()] = index
    if not class_of:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(class_of), class_of


PARQUET_COLUMNS = ("id", "image", "label")


def list_parquet_images(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Sorted ids of a Parquet image table (file or folder) and the class index (``label``) of each. Only the
    ``id`` and ``label`` columns are read. Raises ``FileNotFoundError`` (missing / empty) or ``ValueError``
    (missing columns, null or duplicate ids, null or negative labels)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Parquet image table not found")
    dataset = pads.dataset(str(path), format="parquet")
    missing = [c for c in PARQUET_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{path}: Parquet image table lacks column(s) {', '.join(missing)} "
                         f"(expected id string, image binary, label int; has {', '.join(dataset.schema.names)})")
    id_type = dataset.schema.field("id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise ValueError(f"{path}: column id must be a string, got {id_type}")
    if not pa.types.is_integer(dataset.schema.field("label").type):
        raise ValueError(f"{path}: column label must be an integer class index, "
                         f"got {dataset.schema.field('label').type}")
    table = dataset.to_table(columns=["id", "label"])
    if table.num_rows == 0:
        raise FileNotFoundError(f"{path}: Parquet image table has no rows")
    if table.column("id").null_count or table.column("label").null_count:
        raise ValueError(f"{path}: null id or label values")
    ids = [str(i) for i in table.column("id").to_pylist()]
    labels = table.column("label").to_pylist()
    if int(pc.min(table.column("label")).as_py()) < 0:
        raise ValueError(f"{path}: negative label values")
    class_of = dict(zip(ids, (int(v) for v in labels)))
    if len(class_of) != len(ids) or "" in class_of:
        dup = len(ids) - len(class_of)
        raise ValueError(f"{path}: ids must be unique and non-empty ({dup} duplicate(s))")
    return sorted(class_of), class_of


def plan_shards(ids: list[str], shard_size: int) -> list[list[str]]:
    """Deterministic shard plan: sorted ids in chunks of ``shard_size``; shard ``i`` is chunk ``i``."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    ids = sorted(ids)
    return [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]


def plan_labeling(label: LabelSection) -> LabelingPlan:
    """Every check of a labelling job that needs no Ray, on the driver: the label section's inputs, the image list,
    the class count, each member's weights file (read once: fits its architecture, hashed) and the output folder
    (created now, so an unwritable output fails here). One-line ``ConfigError`` naming the key."""
    label.check_inputs()
    key = "label.images_parquet" if label.images_parquet else "label.images"
    try:
        ids, class_of = (list_parquet_images(label.images_parquet) if label.images_parquet
                         else list_images(label.images))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ConfigError(str(e), key) from None
    largest = max(class_of.values())
    num_classes = label.num_classes or largest + 1
    if largest >= num_classes:
        raise ConfigError(f"{num_classes} but {key} has class index {largest}", "label.num_classes")
    try:
        members = check_members(label.member_specs(), num_classes)
    except WeightsError as e:
        raise ConfigError(str(e), "label.members") from None
    version = label_version(members, label.explainer, label.input_size, num_classes, label.geometry)
    output = output_location(label.output, "label.output")
    try:
        version_dir = _version_dir(output, version)
    except OSError as e:
        raise ConfigError(f"cannot create {storage.join(output, version)} ({e.strerror or e})",
                          "label.output") from None
    shards.clean_tmp(version_dir)
    intact, discarded = shards.scan_shards(version_dir)
    stamps = image_stamps(label.images, ids) if label.images else {}
    intact, changed = drop_changed_shards(version_dir, intact, label.images, stamps)
    discarded.update(changed)
    for name in discarded:  # uncommitted now: their images are planned again below
        shards.discard_shard(version_dir, name)
    planned, todo, removed = plan_by_identity(ids, intact, label.shard_size)
    return LabelingPlan(ids, class_of, num_classes, members, version, version_dir, planned, todo, removed, discarded,
                        stamps)


def image_stamps(root: str, ids: list[str]) -> dict[str, list[int]]:
    """``[size, mtime_ns]`` of each image file (one ``stat`` each: cheap next to reading the files)."""
    stamps = {}
    for image_id in ids:
        st = os.stat(os.path.join(root, image_id))
        stamps[image_id] = [st.st_size, st.st_mtime_ns]
    return stamps


def drop_changed_shards(version_dir: str, manifests: list[dict], root: str, stamps: dict[str, list[int]]
                        ) -> tuple[list[dict], dict[str, str]]:
    """Split committed shards into those whose images are as they were labelled and those with a changed image
    (``{shard name: reason}``). Quick check first: an image whose size and mtime match the manifest's stamp is
    unchanged; one whose stamp differs is read and compared with the sha256 its row recorded, so a copied or
    touched folder costs one read of the touched files and no relabelling (its new stamps are written back). An
    image that could not be labelled has no recorded hash: a new stamp relabels it (a repaired file gets its
    label). Shards without stamps (Parquet input) are kept."""
    kept, changed = [], {}
    for manifest in manifests:
        recorded = dict(zip(manifest["ids"], manifest.get("stamps") or []))
        moved = [i for i, stamp in recorded.items() if i in stamps and list(stamp) != stamps[i]]
        if not moved:
            kept.append(manifest)
            continue
        table = shards.read_labels(version_dir, columns=["id", "content_hash"], manifests=[manifest])
        hashes = dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist()))
        differ = [i for i in moved if hashes.get(i) != storage.sha256_file(os.path.join(root, i))]
        if differ:
            changed[shards.shard_name(int(manifest["shard"]))] = (
                f"{len(differ)} image(s) changed since they were labelled (first: {os.path.join(root, differ[0])})")
            continue
        manifest = {**manifest, "stamps": [stamps.get(i, recorded[i]) for i in manifest["ids"]]}
        shards.write_manifest(version_dir, int(manifest["shard"]), manifest)
        kept.append(manifest)
    return kept, changed


def plan_by_identity(ids: list[str], committed: list[dict], shard_size: int
                     ) -> tuple[dict[int, list[str]], list[int], list[str]]:
    """Resume by identity, not by shard index: the ids no committed manifest holds go into new shards numbered
    after the last committed one, whatever changed since (shard size, images added or removed). Returns
    (index -> ids of every shard, the new indices, committed ids no longer listed). No id is planned twice."""
    planned = {int(m["shard"]): [str(i) for i in m["ids"]] for m in committed}
    done = {i for chunk in planned.values() for i in chunk}
    first = max(planned, default=-1) + 1
    new = plan_shards(sorted(set(ids) - done), shard_size)
    planned.update({first + k: chunk for k, chunk in enumerate(new)})
    return planned, [first + k for k in range(len(new))], sorted(done - set(ids))


def _version_dir(output: str, version: str) -> str:
    """``<output>/<version>``. A local folder is created now (an unwritable output fails before any Ray work)
    and named as a ``Path`` names it; on an object store the prefix appears with its first object."""
    location = storage.join(output, version)
    if storage.is_uri(location):
        return location
    path = Path(location)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# --------------------------------------------------------------------------------------------------- stages


# --------------------------------------------------------------------------------------------------- driver


def explainer_pool(num_actors: int):
    """The explainer actors' ``ActorPoolStrategy``: one call at a time, on each actor's main thread. Ray Data's
    default runs a class UDF on a helper thread, where torch's OpenMP team keeps its cores busy about 15% less
    of the time (bench/RESULTS.md); Ray Data still queues the next batches at the actor."""
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=num_actors, max_concurrent_calls_per_actor=1, enable_true_multi_threading=True)


def _run_pipeline(label: LabelSection, plan: LabelingPlan, num_actors: int, seed: int,
                  log: list[str], stages: dict) -> tuple[list[dict], int]:
    """Label the shards ``plan.todo`` in one Ray Data pipeline; commit each shard as soon as all its rows are in.
    Returns (manifests of the newly committed shards, bytes written); the progress lines printed go to ``log``,
    the stage timings (seconds) to ``stages``: ``first_output_s`` (pipeline start to the first labelled batch at
    the driver), ``actors_ready_s`` (pipeline start to the last actor having its members loaded: process start,
    imports, loading and preparing), ``explain_s`` (the actors' calls, summed),
    ``pipeline_s``."""
    import ray
    from ray.data import DataContext

    from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    _print(f"[rayseg] {num_actors} explainer actor(s) x {label.cpus_per_actor:g} CPUs"
           + (f", {label.gpus_per_actor:g} GPUs" if label.gpus_per_actor > 0 else ""), log)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stdout.isatty()
    explain_kwargs = {}
    if label.gpus_per_actor > 0:
        explain_kwargs["num_gpus"] = float(label.gpus_per_actor)
    # CPU task stages pass max_calls=0 (Ray's default for CPU tasks: unlimited, so no change in behaviour) so that
    # their remote args differ from the actor stage's: otherwise Ray Data fuses decoding into the explainer
    # actors, and on GPU actors the decoding would no longer overlap with the explanation.
    cpu_args: dict = {"max_calls": 0, "num_cpus": float(label.cpus_per_task)}
    norm = {"input_size": int(label.input_size), "geometry": label.geometry}
    if label.images_parquet:
        ds = ray.data.read_parquet(str(label.images_parquet)).select_columns(list(PARQUET_COLUMNS))
        ds = ds.map_batches(decode_parquet_rows, batch_size=label.batch_size, batch_format="numpy", **cpu_args,
                            fn_kwargs={**parquet_lookup(plan.shards, plan.todo),
                                       **norm})
    else:
        items = [{"id": rel, "shard": i, "class_index": plan.class_of[rel]} for i in plan.todo
                 for rel in plan.shards[i]]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // label.batch_size, 64)))
        ds = ds.map_batches(decode_and_resize, batch_size=label.batch_size, batch_format="numpy", **cpu_args,
                            fn_kwargs={"images_root": str(label.images), **norm})
    ds = ds.map_batches(
        ExplainActor,
        batch_size=label.batch_size,
        batch_format="numpy",
        compute=explainer_pool(num_actors),
        num_cpus=float(label.cpus_per_actor),
        fn_constructor_kwargs={
            "members": list(plan.members),
            "num_classes": plan.num_classes,
            "explainer": label.explainer,
            "mean": tuple(IMAGENET_MEAN),
            "std": tuple(IMAGENET_STD),
            "use_gpu": label.gpus_per_actor > 0,
            "seed": int(seed),
            "num_threads": max(1, int(math.ceil(label.cpus_per_actor))),
            "score_members": bool(label.true_masks),
        },
        **explain_kwargs,
    )
    ds = ds.map_batches(encode_and_score, batch_size=label.batch_size, batch_format="numpy", **cpu_args,
                        fn_kwargs={"true_masks": str(label.true_masks or ""), "geometry": label.geometry})

    names = member_names(plan.members)
    pending: dict[int, list[dict]] = defaultdict(list)
    committed, written = [], 0
    total = sum(len(plan.shards[i]) for i in plan.todo)
    start, started_at = time.perf_counter(), time.time()
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        if "first_output_s" not in stages:
            stages["first_output_s"] = time.perf_counter() - start
        stages["explain_s"] = stages.get("explain_s", 0.0) + float(batch["explain_s"].sum())
        ready = float(batch["actor_ready_at"].max()) - started_at  # same clock on one machine; skew across nodes
        if ready > stages.get("actors_ready_s", 0.0):
            stages["actors_ready_s"] = ready
        columns = list(batch)
        for j in range(len(batch["id"])):
            row = {c: batch[c][j] for c in columns}
            index = int(row["shard"])
            pending[index].append(row)
            if len(pending[index]) == len(plan.shards[index]):
                stamps = [plan.stamps[i] for i in plan.shards[index]] if plan.stamps else None
                manifest = shards.commit_shard(plan.version_dir, index, plan.shards[index], pending.pop(index),
                                               plan.version, names, bool(label.true_masks), label.geometry, stamps)
                written += manifest.pop("bytes")
                committed.append(manifest)
                _print_progress(committed, len(plan.todo), total, time.perf_counter() - start, log)
    if pending:
        raise RuntimeError(f"labelling pipeline ended with incomplete shards {sorted(pending)} "
                           f"({sum(map(len, pending.values()))} rows); re-run to finish them")
    stages["pipeline_s"] = time.perf_counter() - start
    return committed, written


def parquet_lookup(planned: dict[int, list[str]], todo: list[int]) -> dict:
    """What a Parquet stage needs to find the new shard of a table row (:func:`rayseg.labeling.stages.new_shard_of`):
    the first id and index of each shard still to do (sorted ids), and the committed ids that sort inside their
    range (resumed with other shard sizes or added images); committed ids before the first new one need no
    list. ``planned``/``todo``: :func:`plan_by_identity`'s shards and new indices."""
    starts = [planned[i][0] for i in todo]
    skip = sorted(i for k, chunk in planned.items() if k not in todo for i in chunk
                  if starts and i >= starts[0])  # committed and new ids are disjoint (plan_by_identity)
    return {"shard_starts": starts, "shard_indices": list(todo), "skip_ids": skip}


def _print(line: str, log: list[str]) -> None:
    print(line, flush=True)
    log.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}")


def _print_progress(committed: list[dict], shards_todo: int, images_todo: int, seconds: float,
                    log: list[str]) -> None:
    """One line per committed shard, on a terminal or not (job logs): shards and images done, rate, ETA."""
    done = sum(m["rows"] + m["errors"] for m in committed)
    rate = done / seconds if seconds > 0 else 0.0
    eta = format_duration((images_todo - done) / rate) if rate > 0 else "?"
    _print(f"[rayseg] shard {committed[-1]['shard']} committed: {len(committed)}/{shards_todo} shards, "
           f"{done}/{images_todo} images, {rate:.1f} images/s, ETA {eta}", log)


def _append_log(version_dir: str, lines: list[str]) -> None:
    """Add this run's lines to ``<version_dir>/log.txt`` (read and rewritten whole: object stores cannot append)."""
    location = storage.join(version_dir, "log.txt")
    before = storage.read_text(location) if storage.exists(location) else ""
    storage.write_text(location, before + "".join(f"{line}\n" for line in lines))


def actors_for_cluster(label: LabelSection, cluster: dict[str, float]) -> int:
    """The explainer actor count for this cluster: ``label.num_actors``, or with ``label.num_actors: 0`` as many as
    the cluster holds now: with GPUs per actor, ``GPUs // gpus_per_actor`` (also bounded by the CPUs); on CPU,
    ``(CPUs − cpus_per_task) // cpus_per_actor``. A given count is checked by :func:`check_cpu_budget`. An
    autoscaling cluster's future nodes are not counted: give the count there. One-line ``ConfigError`` if
    nothing fits."""
    cpus, gpus = float(cluster.get("CPU", 0.0)), float(cluster.get("GPU", 0.0))
    if label.num_actors > 0:
        check_cpu_budget(label, label.num_actors, cpus)
        return label.num_actors
    fit = math.floor((cpus - label.cpus_per_task) / label.cpus_per_actor + 1e-9)
    if label.gpus_per_actor > 0:
        fit = min(fit, math.floor(gpus / label.gpus_per_actor + 1e-9))
    if fit < 1:
        raise ConfigError(f"0 (as many as fit) but this cluster ({cpus:g} CPUs, {gpus:g} GPUs) holds no explainer "
                          f"actor of {label.cpus_per_actor:g} CPUs and {label.gpus_per_actor:g} GPUs next to a "
                          f"{label.cpus_per_task:g}-CPU task", "label.num_actors")
    return fit


def check_cpu_budget(label: LabelSection, num_actors: int, cluster_cpus: float) -> None:
    """The explainer actors reserve ``num_actors x cpus_per_actor`` CPUs and the decode/encode tasks need
    ``cpus_per_task`` more; otherwise Ray Data waits forever for a CPU (no error, no progress). Fail with
    one line."""
    reserved, task = num_actors * label.cpus_per_actor, label.cpus_per_task
    if reserved + task > cluster_cpus + 1e-9:
        raise ConfigError(f"x label.num_actors = {reserved:g} CPUs leaves none of this cluster's {cluster_cpus:g} "
                          f"CPUs for decoding; use at most {max(cluster_cpus - task, 0):g} CPUs for the explainer "
                          f"actors (or lower label.cpus_per_task, now {task:g})", "label.cpus_per_actor")


def run_labeling(label: LabelSection, plan: LabelingPlan, num_actors: int, seed: int,
                 stages: dict | None = None) -> dict:
    """Label the shards of ``plan`` not yet committed (no Ray work when there are none) with ``num_actors``
    explainer actors on the Ray cluster this process is connected to; returns the summary (also written to
    ``<version_dir>/summary.json``). Noise of SmoothGrad is seeded by ``seed`` (``run.seed``). ``stages``: the
    seconds of the steps before (planning, Ray's start), kept in the summary's ``stages`` with the pipeline's."""
    stages = dict(stages or {})
    start = time.perf_counter()
    log: list[str] = []
    for reason in plan.discarded.values():
        _print(f"[rayseg] shard removed, its images are labelled again: {reason}", log)
    if plan.removed:
        _print(f"[rayseg] {len(plan.removed)} labelled image(s) are no longer in the input (first: "
               f"{plan.removed[0]}); their labels stay in their shards", log)
    new, written = _run_pipeline(label, plan, num_actors, seed, log, stages) if plan.todo else ([], 0)
    seconds = time.perf_counter() - start

    manifests = shards.committed_shards(plan.version_dir)
    new_images = sum(m["rows"] + m["errors"] for m in new)
    summary = {
        "label_version": plan.version,
        "version_dir": plan.version_dir,
        "images": len(plan.ids),
        "new_images": new_images,
        "labelled": sum(m["rows"] for m in new),
        "errors": sum(m["errors"] for m in new),
        "total_rows": sum(m["rows"] for m in manifests),
        "total_errors": sum(m["errors"] for m in manifests),
        "shards": len(plan.shards),
        "shards_done": len(new),
        "shards_skipped": len(plan.shards) - len(plan.todo),
        "removed_images": len(plan.removed),
        "shards_redone": len(plan.discarded),  # corrupt, or with a changed image
        "seconds": round(seconds, 3),
        "images_per_s": round(new_images / seconds, 3) if new_images and seconds > 0 else 0.0,
        "output_bytes": written,
        "total_bytes": shards.shard_bytes(plan.version_dir),
        "images_root": str(Path(label.images).resolve()) if label.images else "",
        "images_parquet": str(Path(label.images_parquet).resolve()) if label.images_parquet else "",
        "true_masks": str(Path(label.true_masks).resolve()) if label.true_masks else "",
        "stages": {k: round(v, 3) for k, v in stages.items()},
    }
    if stages.get("explain_s") and num_actors:  # the share of the actors' time spent explaining
        summary["explainer_busy"] = round(stages["explain_s"] / (num_actors * stages["pipeline_s"]), 3)
    if label.true_masks:
        names = member_names(plan.members)
        scored = [m["iou"] for m in manifests if m.get("iou")]
        count = sum(s["count"] for s in scored)
        summary["iou_images"] = count
        summary["iou_ensemble"] = sum(s["ensemble_sum"] for s in scored) / count if count else float("nan")
        summary["iou_members"] = {n: (sum(s["members_sum"].get(n, 0.0) for s in scored) / count if count
                                      else float("nan")) for n in names}
    storage.write_text(storage.join(plan.version_dir, "summary.json"), json.dumps(summary, indent=1))
    line = (f"labelled {summary['labelled']} images, {summary['errors']} errors, {summary['images_per_s']:.1f} "
            f"images/s, {written} bytes written; shards {summary['shards_done']} done, "
            f"{summary['shards_skipped']} skipped of {summary['shards']} -> {plan.version_dir}")
    if label.true_masks:
        members = ", ".join(f"{n} {v:.3f}" for n, v in summary["iou_members"].items())
        line += f"; top-decile IoU ensemble {summary['iou_ensemble']:.3f} ({members})"
    _print(line, log)
    if "explainer_busy" in summary:
        s = summary["stages"]
        _print(f"[rayseg] time by stage: plan {s.get('plan_s', 0):.1f} s, Ray start {s.get('ray_start_s', 0):.1f} s, "
               f"first labelled batch after {s['first_output_s']:.1f} s ("
               f"actors ready after {s['actors_ready_s']:.1f} s), pipeline {s['pipeline_s']:.1f} s; explainer actors "
               f"busy {100 * summary['explainer_busy']:.0f}% of it", log)
    if plan.todo:  # a re-run with nothing to do leaves the finished folder as it was
        _append_log(plan.version_dir, log)
    return summary
