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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint for the session: moto's server on 127.0.0.1, one bucket. Yields the URI of the
    bucket with its options (endpoint, http, dummy credentials) carried in the URI, so Ray workers need no
    environment to reach it."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    base = (f"s3://testkey:testsecret@rayseg-test/?endpoint_override={host}:{port}&scheme=http"
            f"&region=us-east-1")
    fs, _ = pafs.FileSystem.from_uri(base + "&allow_bucket_creation=true")
    fs.create_dir("rayseg-test")
    try:
        yield base
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_server, request):
    """A fresh prefix in the session's bucket for one test: ``s3://...@rayseg-test/<test name>?<options>``."""
    from rayseg import storage

    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:80]
    return storage.join(s3_server, f"{name}-{os.getpid()}")
