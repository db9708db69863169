"""`ray job submit --working-dir . -- python jobs/claims.py [--budget full] [--storage /shared/claims]`

Inside a submitted job RAY_ADDRESS points at the cluster: every fine-tune and probe is a one-CPU Ray task, so the
cluster runs as many at once as it has CPUs. Give --storage a folder every node sees (a shared filesystem).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the uploaded working dir

from rayseg.cli import main  # noqa: E402

sys.exit(main(["claims", *sys.argv[1:]]))
