"""Frees the Ray Train placement group of a trial that Tune stopped (ray-project/ray#54305).

Why this exists. When Tune stops a trial (ASHA, the end of the sweep, an interruption) it terminates the trial's
actor. The trial's Train V2 controller is an actor *owned* by that trial actor, so it dies with it, before it can
shut its worker group down. The worker group's placement group (``train.num_workers`` bundles of
``train.cpus_per_worker`` CPUs) is not owned by the controller: a placement group lives until both its creator
actor *and* its job have died, and the job is the sweep's driver, which is still running. So the CPUs stay
reserved, the next trial's controller waits for them ("The worker group startup timed out after 60.0 seconds")
and retries forever, while Tune itself reports 0 CPUs in use (it only counts the trial drivers).

Ray Train starts a detached ``PlacementGroupCleaner`` for exactly this case, but it asks the State API whether
the controller is alive, and the State API resolves the cluster address from the environment: with more than one
Ray instance on the machine (a test cluster, another user's cluster) and no ``RAY_ADDRESS`` it raises
``ConnectionError: Found multiple active Ray instances``, which ends the cleaner's monitor thread, and the
placement group is never removed. Raising ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` would not help: the
resources never come back.

So a sweep runs one :class:`PlacementGroupReaper` actor (0 CPUs, owned by the sweep driver). Each Train run
registers its controller's handle and its placement group with it as soon as the worker group is up
(:func:`train_callback`, a Train controller callback), and unregisters when the controller shuts the group down
itself. The reaper checks the registered controllers every ``interval_s`` through their actor handles (no State
API): when one has died (``ActorDiedError``) its placement group is removed. ``drain`` waits until every
registered run is gone, so the sweep returns with the cluster's resources free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

__all__ = ["PlacementGroupReaper", "start_reaper", "stop_reaper", "train_callback"]

log = logging.getLogger(__name__)


class PlacementGroupReaper:
    """Ray actor (async): placement groups of Train runs, removed once their controller has died."""

    def __init__(self, interval_s: float = 0.5):
        self._interval_s = interval_s
        self._runs: dict[str, tuple[Any, Any]] = {}  # placement group id (hex) -> (controller handle, group)
        self._removed: list[str] = []
        self._watching = False

    async def register(self, controller, placement_group) -> None:
        self._runs[placement_group.id.hex()] = (controller, placement_group)

    async def unregister(self, placement_group_id: str) -> None:
        self._runs.pop(placement_group_id, None)  # also drops the controller handle, which keeps it alive

    async def reap(self) -> int:
        """One pass: remove the placement group of every registered run whose controller has died."""
        import ray
        from ray.util.placement_group import remove_placement_group

        removed = 0
        for key, (controller, group) in list(self._runs.items()):
            try:
                # a controller busy in a blocking call answers late: treated as alive, asked again next pass
                await asyncio.wait_for(controller.__ray_ready__.remote(), timeout=10)
                continue
            except asyncio.TimeoutError:
                continue
            except ray.exceptions.ActorDiedError:
                pass
            except ray.exceptions.RayActorError:  # unavailable (e.g. its node is unreachable): not known dead
                continue
            if self._runs.pop(key, None) is None:  # a concurrent pass (watch / drain) got it first
                continue
            try:
                remove_placement_group(group)  # a no-op when the controller had removed it already
            except Exception as exc:  # noqa: BLE001 - keep watching the others
                log.warning("could not remove placement group %s: %s", key, exc)
                continue
            self._removed.append(key)
            removed += 1
        return removed

    async def watch(self) -> None:
        """Reap every ``interval_s`` until the actor is killed (started once, by :func:`start_reaper`)."""
        if self._watching:
            return
        self._watching = True
        while True:
            await self.reap()
            await asyncio.sleep(self._interval_s)

    async def drain(self, timeout_s: float) -> dict[str, Any]:
        """Wait until no run is registered (each shut down or reaped), for at most ``timeout_s`` seconds.
        Returns ``{"removed": [group ids reaped so far], "left": [group ids still registered]}``."""
        deadline = time.monotonic() + timeout_s
        while self._runs and time.monotonic() < deadline:
            await self.reap()
            if self._runs:
                await asyncio.sleep(self._interval_s)
        return {"removed": list(self._removed), "left": list(self._runs)}


def start_reaper(interval_s: float = 0.5):
    """Start the sweep's reaper actor (owned by the calling driver: it ends with it) and its watch loop."""
    import ray

    reaper = ray.remote(num_cpus=0, max_concurrency=64)(PlacementGroupReaper).remote(interval_s)
    reaper.watch.remote()
    return reaper


def stop_reaper(reaper, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until every stopped trial's placement group is removed (see ``drain``), then end the actor."""
    import ray

    try:
        return ray.get(reaper.drain.remote(timeout_s), timeout=timeout_s + 30)
    except Exception as exc:  # noqa: BLE001 - e.g. the cluster is going away: do not hide the sweep's own outcome
        log.warning("placement-group reaper: %s", exc)
        return {"removed": [], "left": []}
    finally:
        try:
            ray.kill(reaper)
        except Exception as exc:  # noqa: BLE001
            log.debug("placement-group reaper already gone: %s", exc)


def train_callback(reaper):
    """A Ray Train controller callback that registers each worker group's placement group with ``reaper``, or
    ``None`` if this Ray version lacks the (internal) controller callback interface Ray's own cleaner uses."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:  # pragma: no cover - a Ray without Train V2's callback interface
        log.warning("this Ray version has no Train worker-group callbacks: placement groups of stopped trials "
                    "are left to Ray's own cleaner")
        return None

    class RegisterPlacementGroup(WorkerGroupCallback):
        """Runs inside the Train controller: (un)registers the worker group's placement group."""

        def __init__(self, reaper):
            self._reaper = reaper
            self._group_id: str | None = None

        def after_worker_group_start(self, worker_group) -> None:
            import ray

            try:
                group = worker_group.get_worker_group_state().placement_group_handle.placement_group
                controller = ray.get_runtime_context().current_actor
                ray.get(self._reaper.register.remote(controller, group), timeout=60)
                self._group_id = group.id.hex()
            except Exception as exc:  # noqa: BLE001 - never fail a training run over its clean-up
                log.warning("could not register the worker group's placement group for clean-up: %s", exc)

        def after_worker_group_shutdown(self, worker_group_context) -> None:
            self._forget()

        def after_worker_group_abort(self, worker_group_context) -> None:
            self._forget()

        def _forget(self) -> None:
            if self._group_id is not None:
                try:
                    self._reaper.unregister.remote(self._group_id)
                except Exception as exc:  # noqa: BLE001 - the reaper removes it once this controller is gone
                    log.debug("could not unregister placement group %s: %s", self._group_id, exc)
                self._group_id = None

    return RegisterPlacementGroup(reaper)
