"""`ray job submit --working-dir . -- python jobs/sweep.py --space tune_spaces/....yaml --config jobs/configs/...yaml [key=value ...]`

Inside a submitted job RAY_ADDRESS points at the cluster: trials run on it, as many at once as its CPUs/GPUs allow.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the uploaded working dir

from rayseg.cli import main  # noqa: E402

sys.exit(main(["sweep", *sys.argv[1:]]))
