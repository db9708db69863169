"""``rayseg label``: pseudo-label an ImageFolder (or a Parquet table of images) with an explanation ensemble.

Everything that needs no Ray is checked first (:func:`rayseg.labeling.pipeline.plan_labeling`: inputs, members'
weights, output folder); a job with nothing left to label starts no Ray cluster. Otherwise the command joins or
starts Ray, sizes the explainer pool for the cluster once and runs the one Ray Data pipeline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rayseg import storage
from rayseg.commands.args import resolve
from rayseg.config import LabelSection


def label_images(label: LabelSection, seed: int = 0, address: str | None = None, dashboard: bool = True) -> dict:
    """Run (or resume) the labelling job of ``label`` (``run.seed`` = ``seed``); returns its summary. ``dashboard``:
    whether a local cluster started here runs Ray's dashboard (:func:`rayseg.engine.runner.ensure_ray`)."""
    from rayseg.labeling.pipeline import plan_labeling, run_labeling

    started = time.perf_counter()
    plan = plan_labeling(label)
    stages = {"plan_s": time.perf_counter() - started}
    num_actors = 0
    if plan.todo:
        from rayseg.engine.runner import ensure_ray

        started = time.perf_counter()
        ensure_ray(address, dashboard)  # before `import ray`: a local cluster is bound to 127.0.0.1 at import time
        import ray

        from rayseg.labeling.pipeline import actors_for_cluster

        num_actors = actors_for_cluster(label, ray.cluster_resources())
        stages["ray_start_s"] = time.perf_counter() - started
    summary = run_labeling(label, plan, num_actors, seed, stages)
    if summary["shards_done"] and not storage.is_uri(summary["version_dir"]):
        write_preview(summary)
    return summary


PREVIEW_IMAGES = 8


def write_preview(summary: dict) -> None:
    """A look at the labels after each run that labelled something: ``<version_dir>/preview.png`` (the
    ``show-labels`` grid of the first 8 images, with IoU when true masks were given) and the same PNG as image
    ``labels/grid`` (step = labelled rows so far) in an event file of ``<version_dir>/tensorboard``. Both are written
    in one atomic step each (:func:`rayseg.storage.write_bytes`), so a full disk is one error line naming the file."""
    import io
    import socket

    from PIL import Image
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    from rayseg.commands.show_labels import show_labels

    version_dir = Path(summary["version_dir"])
    png = show_labels(version_dir, None, version_dir / "preview.png", count=PREVIEW_IMAGES)
    with Image.open(png) as image:
        width, height = image.size
    grid = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png.read_bytes())
    events = io.BytesIO()
    records = RecordWriter(events)
    records.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    records.write(Event(wall_time=time.time(), step=summary["total_rows"],
                        summary=Summary(value=[Summary.Value(tag="labels/grid", image=grid)])).SerializeToString())
    name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.labels"
    storage.write_bytes(version_dir / "tensorboard" / name, events.getvalue())


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    # A process that only labels runs no Ray Train, whose placement-group cleaner is what needs the dashboard.
    label_images(cfg.label, cfg.run.seed, args.address, dashboard=False)
    return 0
