"""Shared fixtures. Ray clusters here bind to loopback only and are stopped by their own PIDs."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# A local cluster needs no network interface: make Ray pick 127.0.0.1 instead of the machine's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (4 logical CPUs, so 2 training workers plus a
    driver never wait on each other on a 2-core machine). Yields its GCS address."""
    import ray

    from tests.ray_procs import cluster_pids, stop_pids

    temp_dir = tempfile.mkdtemp(prefix="rs-ray-", dir="/tmp")  # short: Unix socket paths are limited
    ray.init(num_cpus=4, num_gpus=0, object_store_memory=256 * 1024**2, include_dashboard=False,
             _temp_dir=temp_dir, namespace="rayseg-tests", log_to_driver=True)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        stop_pids(cluster_pids(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
