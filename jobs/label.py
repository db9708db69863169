"""`ray job submit --working-dir . -- python jobs/label.py --config jobs/configs/label.yaml [key=value ...]`

Inside a submitted job RAY_ADDRESS points at the cluster, so the Ray Data pipeline runs on it (explainer actors
on its GPU workers with label.gpus_per_actor > 0).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the uploaded working dir

from rayseg.cli import main  # noqa: E402

sys.exit(main(["label", *sys.argv[1:]]))
