"""Start claimed polls at their exact due time inside a worker process.

Dramatiq's Redis consumers poll with a back-off of up to ``worker_timeout``,
once to move a due message off the delay queue and once more to fetch it, so a
message can arrive a second or two after its ``eta``. Poll messages are
therefore released ``dispatch_lead`` seconds early. The actor claims the slot
and hands the poll to this launcher, which keeps it on a timer and starts it on
a thread pool at the due time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

logger = logging.getLogger(__name__)

#: Threads that run polls in each worker process by default.
DEFAULT_POLL_THREADS = 16


class PollLauncher:
    """A timer thread plus a thread pool that run jobs at wall-clock times.

    Args:
        threads: Size of the pool that runs the jobs.
        clock: Wall clock in seconds; replaced in tests.
    """

    def __init__(
        self,
        threads: int = DEFAULT_POLL_THREADS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._closing = False
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="bts-sync-poll"
        )
        self._running: set[Future[None]] = set()
        self._timer = threading.Thread(
            target=self._run_timer, name="bts-sync-launcher", daemon=True
        )
        self._timer.start()

    def submit(self, due_s: float, job: Callable[[], None]) -> None:
        """Run ``job`` on the pool at ``due_s`` (Unix time), or now if that has passed."""
        with self._condition:
            if self._closing:
                raise RuntimeError("The poll launcher is shutting down.")
            heapq.heappush(self._heap, (due_s, next(self._order), job))
            self._condition.notify()

    def shutdown(self, timeout_s: float | None = None) -> bool:
        """Stop taking jobs, run the waiting ones at their due times and wait for all.

        Returns:
            Whether every job finished within ``timeout_s``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._condition:
            self._closing = True
            waiting = len(self._heap)
            self._condition.notify()
        if waiting:
            logger.info(
                "Waiting for %d claimed polls to reach their due time before stopping.",
                waiting,
            )

        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self._timer.join(remaining)
        self._pool.shutdown(wait=deadline is None)
        if deadline is None:
            return True
        for future in list(self._running):
            try:
                future.result(max(0.0, deadline - time.monotonic()))
            except Exception:
                return False
        return not self._timer.is_alive()

    def _run_timer(self) -> None:
        while True:
            with self._condition:
                while not self._heap and not self._closing:
                    self._condition.wait()
                if not self._heap:
                    return
                due_s = self._heap[0][0]
                wait_s = due_s - self._clock()
                if wait_s > 0:
                    self._condition.wait(wait_s)
                    continue
                _, _, job = heapq.heappop(self._heap)

            future = self._pool.submit(_run_logged, job)
            self._running.add(future)
            future.add_done_callback(self._running.discard)


def _run_logged(job: Callable[[], None]) -> None:
    """Run ``job`` and log what it raises, which the pool would otherwise keep silently."""
    try:
        job()
    except Exception:
        logger.exception(
            "A launched poll raised; the chain goes on with its next slot."
        )
