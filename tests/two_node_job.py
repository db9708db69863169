"""Run by tests/test_two_nodes.py in its own process: a two-node cluster on this machine
(``ray.cluster_utils.Cluster``, 3 logical CPUs per node), then a labelling job with two explainer actors and a
2-worker training run on it. Prints one JSON line: the node of every explainer actor and Train worker, and the
labelling / training summaries. Usage: ``python tests/two_node_job.py WORKDIR``."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def nodes_of(class_marker: str) -> list[str]:
    """Node ids of every actor (alive or dead) whose class name contains ``class_marker`` (GCS actor table)."""
    from ray._private.state import state

    return sorted(a["Address"]["NodeID"] for a in state.actor_table(None).values()
                  if class_marker in str(a.get("ActorClassName")))


def main(workdir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import torch

    from rayseg.config import load_config
    from rayseg.data.synthetic import SyntheticClassification, write_image_folder
    from rayseg.engine.runner import train
    from rayseg.commands.label import label_images
    from rayseg.config import ExplainerSection, LabelSection
    from rayseg.methods import METHODS
    from rayseg.models import build_classifier

    temp_dir = tempfile.mkdtemp(prefix="rs-2n-", dir="/tmp")
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 3, "temp_dir": temp_dir, "include_dashboard": False,
                                      "object_store_memory": 200 * 1024**2})
    cluster.add_node(num_cpus=3, object_store_memory=200 * 1024**2)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        cluster.wait_for_nodes()
        node_ids = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        images = workdir / "images"
        write_image_folder(SyntheticClassification(num_images=24, image_size=32, classes=[0, 1, 2]), images)
        specs = []
        for arch in ("resnet18", "mobilenet_v3_small"):
            torch.manual_seed(0)
            path = workdir / f"{arch}.pt"
            torch.save(build_classifier(arch, 3).state_dict(), path)
            specs.append(f"{arch}:{path}")
        # two actors of 2 CPUs: a 3-CPU node holds only one, so they must be on different nodes, and each node
        # keeps one CPU for the decode / encode tasks
        job = LabelSection(images=str(images), output=str(workdir / "labels"), members=specs, num_classes=3,
                           explainer=ExplainerSection(samples=2), input_size=32, shard_size=8, batch_size=4,
                           num_actors=2, cpus_per_actor=2.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = label_images(job)
        explainer_nodes = nodes_of("ExplainActor")
        # two Train workers of 2 CPUs each: again one per node
        cfg = load_config(None, [f"run.storage={workdir / 'runs'}", "run.name=two-nodes", "data.num_train=16",
                                 "data.num_val=8", "data.image_size=32", "data.crop_size=32",
                                 "model.output_stride=16", "model.channels=16", "train.batch_size=4",
                                 "train.epochs=1", "train.num_workers=2", "train.cpus_per_worker=2",
                                 "train.log_every=2"])
        summary = train(cfg, "pretrain", METHODS[cfg.method])
        worker_nodes = nodes_of("RayTrainWorker")
        print(json.dumps({"nodes": node_ids, "explainer_nodes": explainer_nodes, "worker_nodes": worker_nodes,
                          "labelled": labels["labelled"], "images": labels["images"], "steps": summary["steps"],
                          "miou": summary["miou"]}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
