"""``rayseg label``: pseudo-label an ImageFolder (or a Parquet table of images) with an explanation ensemble.

Everything that needs no Ray is checked first (:func:`rayseg.labeling.pipeline.plan_labeling`: inputs, members'
weights, output folder); a job with nothing left to label starts no Ray cluster. Otherwise the command joins or
starts Ray, sizes the explainer pool for the cluster once and runs the one Ray Data pipeline.
"""

from __future__ import annotations

import argparse

from rayseg.commands.args import resolve
from rayseg.config import LabelSection


def label_images(label: LabelSection, seed: int = 0, address: str | None = None) -> dict:
    """Run (or resume) the labelling job of ``label`` (``run.seed`` = ``seed``); returns its summary."""
    from rayseg.labeling.pipeline import plan_labeling, run_labeling

    plan = plan_labeling(label)
    num_actors = 0
    if plan.todo:
        from rayseg.engine.runner import ensure_ray

        ensure_ray(address)  # before `import ray`: a local cluster is bound to 127.0.0.1 at import time
        import ray

        from rayseg.labeling.pipeline import actors_for_cluster

        num_actors = actors_for_cluster(label, ray.cluster_resources())
    return run_labeling(label, plan, num_actors, seed)


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    label_images(cfg.label, cfg.run.seed, args.address)
    return 0
