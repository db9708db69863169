"""Shared fixtures, and the ``ray`` marker. Ray clusters here bind to loopback only and are stopped by their own
PIDs.

Every test that starts Ray is marked ``ray`` automatically (:func:`pytest_collection_modifyitems`): one that
uses a fixture named in :data:`RAY_FIXTURES`, or whose source, or the source of a fixture it uses, calls one of
:data:`RAY_STARTERS`. ``pytest -m "not ray"`` then starts no cluster. :func:`ray_guard` fails an unmarked test
that starts Ray anyway (in this process, or a new cluster in a subprocess), so the rule cannot drift.
"""

from __future__ import annotations

import atexit
import inspect
import os
import re
import shutil
import sys
import tempfile

import pytest

# A local cluster needs no network interface: make Ray pick 127.0.0.1 instead of the machine's address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Dummy credentials for the session's local S3 server (moto accepts any); never real ones in tests.
os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = "testkey", "testsecret"
os.environ.pop("AWS_SESSION_TOKEN", None)
# Clusters started without their own temp dir (also by subprocesses) put their session folder here, a short
# private path, so the guard sees every new one and no other run's.
if "RAY_TMPDIR" not in os.environ:
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rs-rt-", dir="/tmp")
    atexit.register(shutil.rmtree, os.environ["RAY_TMPDIR"], True)
RAY_SESSIONS = os.path.join(os.environ["RAY_TMPDIR"], "ray")
os.makedirs(RAY_SESSIONS, exist_ok=True)  # ray.cluster_utils.Cluster writes ray_current_cluster here

RAY_FIXTURES = {"ray_cluster"}
# Calls that always start (or join) a cluster: ray.init, rayseg's ensure_ray and run_sweep (which calls it first),
# ray.cluster_utils.Cluster, `ray start`, and the two-node script. label_images is not one: it starts Ray only
# when there is work left (tests call it to fail before Ray), and where it does without ray_cluster the guard
# says so.
RAY_STARTERS = re.compile(r"\bray\.init\(|\bensure_ray\(|\brun_sweep\(|\bCluster\(|[\"']ray[\"'],\s*[\"']start[\"']"
                          r"|two_node_job\.py")


def _starts_ray(func, seen: dict) -> bool:
    if func not in seen:
        try:
            seen[func] = bool(RAY_STARTERS.search(inspect.getsource(func)))
        except (OSError, TypeError):
            seen[func] = False
    return seen[func]


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark ``ray`` every test that uses a Ray fixture, or whose own or fixtures' source starts Ray."""
    seen: dict = {}
    for item in items:
        if item.get_closest_marker("ray"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        fixtures = [d.func for defs in (info.name2fixturedefs.values() if info else ()) for d in defs]
        if (RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
                or any(_starts_ray(f, seen) for f in [getattr(item, "function", None), *fixtures] if f)):
            item.add_marker(pytest.mark.ray)


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _sessions() -> set[str]:
    try:
        return {n for n in os.listdir(RAY_SESSIONS) if n.startswith("session_") and n != "session_latest"}
    except OSError:
        return set()


_BEFORE = pytest.StashKey[tuple]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_BEFORE] = (_ray_up(), _sessions())  # before any fixture of this test is set up


@pytest.fixture(autouse=True)
def ray_guard(request):
    """Fail a test not marked ``ray`` that started Ray (``ray.is_initialized()`` became true, or a new Ray
    session folder appeared). A cluster already up (the session's ``ray_cluster``) is not counted."""
    yield
    if request.node.get_closest_marker("ray"):
        return
    was_up, sessions = request.node.stash.get(_BEFORE, (True, set()))
    in_process = not was_up and _ray_up()
    if in_process:
        sys.modules["ray"].shutdown()  # do not leave it to the next tests
    if in_process or _sessions() - sessions:
        pytest.fail(f"{request.node.nodeid} starts Ray but is not marked `ray`: use the ray_cluster fixture, or "
                    "add its entry point to RAY_STARTERS in tests/conftest.py", pytrace=False)


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
    bucket with its options (endpoint, http) carried in the URI; the dummy credentials come from the environment
    (set when this module is imported, so every Ray cluster and subprocess of the session inherits them), as a
    user's would: rayseg refuses credentials in URIs."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    base = f"s3://rayseg-test/?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(base + "&allow_bucket_creation=true")
    fs.create_dir("rayseg-test")
    try:
        yield base
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_server, request):
    """A fresh prefix in the session's bucket for one test: ``s3://rayseg-test/<test name>?<options>``."""
    from rayseg import storage

    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in request.node.name)[:80]
    return storage.join(s3_server, f"{name}-{os.getpid()}")
