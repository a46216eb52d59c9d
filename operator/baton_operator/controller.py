"""A level-triggered work queue: one asyncio worker per InferencePool.

Handlers call :meth:`Controller.trigger` for any event about a pool or one of its children; the
pool's worker wakes (bursts coalesce), runs one reconcile in a thread, and sleeps until the next
trigger or the resync period. Transient failures retry with exponential backoff; a pool is
reconciled by one worker at a time, so there are never duplicate children.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter as PromCounter

from baton_operator.api import ApiError, KubeApi
from baton_operator.reconcile import Outcome, reconcile_pool

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
RECONCILES = PromCounter("baton_operator_reconciles", "Reconciles of InferencePools", ["result"])


@dataclass(frozen=True)
class Settings:
    default_image: str
    resync_seconds: float = 60.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # Events come in bursts (a rollout touches a workload, its pods, the status): wait this long
    # after the first so one reconcile answers the whole burst.
    debounce_seconds: float = 0.5
    threads: int = 16


def next_backoff(current: float, settings: Settings) -> float:
    """Double the delay up to the maximum."""
    return min(max(current * 2, settings.backoff_initial_seconds), settings.backoff_max_seconds)


class Controller:
    def __init__(
        self, api: KubeApi, settings: Settings, is_leader: Callable[[], bool] = lambda: True
    ) -> None:
        self.api, self.settings, self.is_leader = api, settings, is_leader
        self._executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="reconcile")
        self._wakeups: dict[Key, asyncio.Event] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reconciles = 0

    def trigger(self, namespace: str, name: str) -> None:
        """Ask for a reconcile of pool namespace/name soon (starting its worker if needed)."""
        key = (namespace, name)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        task = self._tasks.get(key)
        if task is None or task.done():
            self._wakeups[key] = asyncio.Event()
            self._tasks[key] = asyncio.create_task(self._worker(key), name=f"pool {namespace}/{name}")
        self._wakeups[key].set()

    def trigger_all_threadsafe(self) -> None:
        """Wake every known pool (used when this replica becomes leader); callable from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: [event.set() for event in self._wakeups.values()])

    def forget(self, namespace: str, name: str) -> None:
        """The pool is gone: stop its worker."""
        key = (namespace, name)
        task = self._tasks.pop(key, None)
        self._wakeups.pop(key, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _worker(self, key: Key) -> None:
        namespace, name = key
        wakeup = self._wakeups[key]
        delay = self.settings.resync_seconds
        backoff = 0.0
        while True:
            try:
                await asyncio.wait_for(wakeup.wait(), timeout=delay)
                await asyncio.sleep(self.settings.debounce_seconds)
            except TimeoutError:
                pass  # periodic resync: drift is corrected even when no event arrived
            wakeup.clear()
            if not self.is_leader():
                delay = self.settings.resync_seconds
                continue
            try:
                outcome = await asyncio.get_running_loop().run_in_executor(
                    self._executor, reconcile_pool, self.api, namespace, name, self.settings.default_image
                )
            except ApiError as e:
                RECONCILES.labels("retry").inc()
                backoff = next_backoff(backoff, self.settings)
                log.warning("%s/%s: API error, retrying in %.0fs: %s", namespace, name, backoff, e)
                delay = backoff
                continue
            except Exception:  # never let one pool's surprise kill its worker
                RECONCILES.labels("error").inc()
                backoff = next_backoff(backoff, self.settings)
                log.exception("%s/%s: reconcile failed, retrying in %.0fs", namespace, name, backoff)
                delay = backoff
                continue
            self.reconciles += 1
            RECONCILES.labels("ok").inc()
            backoff = 0.0
            delay = self.settings.resync_seconds
            _log_outcome(namespace, name, outcome)
            if outcome.gone:
                self._tasks.pop(key, None)
                self._wakeups.pop(key, None)
                return


def _log_outcome(namespace: str, name: str, outcome: Outcome) -> None:
    if outcome.created or outcome.updated or outcome.deleted:
        log.info(
            "%s/%s: created %s; updated %s; deleted %s",
            namespace,
            name,
            outcome.created,
            outcome.updated,
            outcome.deleted,
        )
    if outcome.error:
        log.warning("%s/%s: %s", namespace, name, outcome.error)
