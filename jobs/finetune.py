"""`ray job submit --working-dir . -- python jobs/finetune.py --config jobs/configs/...yaml [key=value ...]`

Inside a submitted job RAY_ADDRESS points at the cluster, so training joins it instead of starting one.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the uploaded working dir

from rayseg.cli import main  # noqa: E402

sys.exit(main(["finetune", *sys.argv[1:]]))
