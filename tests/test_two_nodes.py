"""Two Ray nodes on one machine (ray.cluster_utils.Cluster): labelling and a 2-worker training run are spread
over both nodes. The cluster lives in its own process (tests/two_node_job.py), apart from the session cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_procs import cluster_pids, stop_pids

pytestmark = pytest.mark.timeout(600)


def test_labelling_and_training_spread_over_two_nodes(tmp_path):
    script = Path(__file__).with_name("two_node_job.py")
    try:
        out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                             timeout=540, env={**os.environ, "PYTHONPATH": str(script.parents[1])})
    finally:
        stop_pids(cluster_pids("/tmp/rs-2n-"))  # whatever is left of the two nodes if the script died
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["nodes"]) == 2
    assert result["labelled"] == result["images"] == 24
    assert len(result["explainer_nodes"]) == 2 and set(result["explainer_nodes"]) == set(result["nodes"])
    assert len(result["worker_nodes"]) == 2 and set(result["worker_nodes"]) == set(result["nodes"])
    assert result["steps"] == 2 and 0.0 <= result["miou"] <= 1.0  # 16 images / (2 workers x 4) = 2 steps
