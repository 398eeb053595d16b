"""The Dramatiq broker and actors: ``dramatiq bts_sync.actors`` runs the worker.

Importing this module loads the configuration (the worker refuses to start on
a broken one) and sets up a ``RedisBroker`` with an explicit middleware list,
following Dramatiq's convention that the worker's module configures the broker.

Each endpoint is a chain of ``poll_endpoint`` messages. A message carries only
the endpoint name, the chain token and the slot's due time. Its delivery claims
the slot, schedules the next one on the grid, and hands the poll to the
process's launcher, which starts it at the due time. The ``watchdog`` actor,
sent once a minute by ``periodiq bts_sync.actors``, re-seeds stalled chains.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, Retries, ShutdownNotifications, TimeLimit
from periodiq import PeriodiqMiddleware, cron

from bts_sync import chain, changes, hooks, politeness
from bts_sync.config import POLL_QUEUE, Endpoint, Settings, load_settings
from bts_sync.connection import connect, describe
from bts_sync.deadletters import dramatiq_namespace
from bts_sync.delivery import deliver_change
from bts_sync.errors import BtsSyncError, UnknownEndpointError
from bts_sync.fetch import FetchResult, fetch
from bts_sync.launcher import PollLauncher
from bts_sync.logs import apply_format_from_environment
from bts_sync.redact import mask_url
from bts_sync.store import PollRecord, poll_outcome, record_and_detect_change
from bts_sync.worker_registry import WorkerRegistry

logger = logging.getLogger(__name__)

#: Queue of poll and watchdog messages.
QUEUE_NAME = POLL_QUEUE

#: Milliseconds an actor call may take. The actor only claims and schedules;
#: the HTTP request runs in the launcher under the endpoint's own deadline.
ACTOR_TIME_LIMIT_MS = 60_000

#: Seconds within which a repeated SIGTERM is taken as the same request to stop.
DUPLICATE_SIGNAL_WINDOW_S = 2.0

#: Extra milliseconds the in-progress mark outlives the fetch deadline.
_LOCK_MARGIN_MS = 1_000


def _load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except BtsSyncError as exc:
        logger.critical("bts-sync cannot start: %s", exc)
        sys.stderr.write(f"Error: {exc}\n")
        raise SystemExit(2) from None


class _PatientRedisBroker(RedisBroker):
    """Redis broker whose ``enqueue`` waits for Redis instead of failing.

    The scheduler (periodiq) sends through it, so a scheduler started before
    Redis, or during a Redis restart, waits and logs instead of crashing.
    ``wait_for_redis_s`` bounds the wait; None waits as long as it takes.
    """

    wait_for_redis_s: float | None = None

    def enqueue(self, message: Any, *, delay: int | None = None) -> Any:
        started = time.monotonic()
        pause_s = 0.5
        while True:
            try:
                return super().enqueue(message, delay=delay)
            except redis.ConnectionError as exc:
                waited = time.monotonic() - started
                if (
                    self.wait_for_redis_s is not None
                    and waited >= self.wait_for_redis_s
                ):
                    raise
                logger.warning(
                    "Redis did not respond at %s (%s); retrying message %s in %.1f s.",
                    mask_url(SETTINGS.redis_url),
                    describe(exc),
                    message.message_id,
                    pause_s,
                )
                time.sleep(pause_s)
                pause_s = min(pause_s * 2, 10.0)


class ChainMiddleware(Middleware):
    """Run the poll launcher in each worker process and stop it gracefully.

    It also makes a worker process treat SIGTERMs that arrive together as one.
    Process managers such as Honcho signal the whole process group, so each
    worker process gets SIGTERM from the manager and again from Dramatiq's main
    process. Dramatiq takes a second SIGTERM as a hard kill, which would drop
    the polls in progress.

    NOTE: Honcho 2.0 sends SIGKILL 5 s after the first of its processes exits,
    and the scheduler exits at once. A worker needs up to about 1 s to notice
    the signal, plus ``dispatch_lead`` for the last claimed slot to fall due,
    plus that poll's deadline: with the defaults (2.5 s and 2.4 s), a slow
    endpoint's last poll can be killed.
    """

    def after_process_boot(self, broker: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            _merge_repeated_sigterm()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        # NOTE: after, not before: until the worker threads have stopped, they
        # may still claim slots and hand polls to the launcher.
        launcher = _launcher_if_started()
        if launcher is not None:
            finished = launcher.shutdown(
                timeout_s=SETTINGS.dispatch_lead_s + _max_deadline_s() + 5
            )
            if not finished:
                logger.warning("Some polls did not finish before the worker stopped.")


def _merge_repeated_sigterm() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return
    first_seen: list[float] = []

    def handler(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if first_seen and now - first_seen[0] < DUPLICATE_SIGNAL_WINDOW_S:
            logger.info("Ignoring a repeated SIGTERM; the worker is already stopping.")
            return
        first_seen[:] = [now]
        previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def _max_deadline_s() -> float:
    return max((e.deadline_s for e in SETTINGS.endpoints), default=0.0)


def build_broker(settings: Settings) -> _PatientRedisBroker:
    """Create the Redis broker with the middleware bts-sync relies on.

    The list is explicit: no retries (a failed poll must not replay its slot),
    time limits, shutdown notifications, periodiq's scheduling option and the
    launcher middleware.
    """
    middleware = [
        TimeLimit(),
        ShutdownNotifications(),
        Retries(max_retries=0),
        PeriodiqMiddleware(skip_delay=30),
        ChainMiddleware(),
        WorkerRegistry(settings.redis_url, settings.key_prefix),
    ]
    return _PatientRedisBroker(  # type: ignore[no-untyped-call]
        url=settings.redis_url,
        namespace=dramatiq_namespace(settings.key_prefix),
        middleware=middleware,
    )


apply_format_from_environment()
SETTINGS = _load_settings_or_exit()
broker = build_broker(SETTINGS)
dramatiq.set_broker(broker)

_state_lock = threading.Lock()
_state: dict[str, Any] = {}


def redis_client() -> redis.Redis:
    """Return this process's client for bts-sync's own keys, created on first use."""
    with _state_lock:
        client: redis.Redis | None = _state.get("client")
        if client is None or _state.get("pid") != os.getpid():
            client = connect(SETTINGS.redis_url, check=False)
            _state.update(client=client, pid=os.getpid())
        return client


def _launcher() -> PollLauncher:
    with _state_lock:
        launcher: PollLauncher | None = _state.get("launcher")
        if launcher is None or _state.get("launcher_pid") != os.getpid():
            launcher = PollLauncher()
            _state.update(launcher=launcher, launcher_pid=os.getpid())
        return launcher


def _launcher_if_started() -> PollLauncher | None:
    with _state_lock:
        if _state.get("launcher_pid") == os.getpid():
            return _state.get("launcher")
        return None


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Count the messages of the bts-sync queue: ready, delayed and dead-lettered.

    Delayed messages that a worker has already fetched into memory are counted
    as delayed too, because they stay in the queue's message hash until acked.
    """
    base = f"{broker.namespace}:{QUEUE_NAME}"
    pipe = client.pipeline(transaction=False)
    pipe.llen(base)
    pipe.hlen(f"{base}.DQ.msgs")
    pipe.zcard(f"{base}.XQ")
    ready, delayed, dead = pipe.execute()
    return {"ready": int(ready), "delayed": int(delayed), "dead": int(dead)}


def now_ms() -> int:
    """Return the wall clock in milliseconds since the epoch."""
    return int(time.time() * 1000)


def send_poll(name: str, token: str, slot_ms: int, lead_ms: int) -> None:
    """Send the message for a slot so that it is delivered ``lead_ms`` before it is due."""
    delay_ms = max(0, slot_ms - lead_ms - now_ms())
    poll_endpoint.send_with_options(args=(name, token, slot_ms), delay=delay_ms or None)


def start_chain(
    client: redis.Redis, endpoint: Endpoint, expected_token: str = ""
) -> chain.SeedOutcome:
    """Start the endpoint's chain, or re-seed it when ``expected_token`` is given.

    Returns:
        The outcome; ``started`` is false when a live chain already runs (or,
        for a re-seed, when another watchdog re-seeded it first).
    """
    interval_ms = int(endpoint.interval_s * 1000)
    lead_ms = int(SETTINGS.dispatch_lead_s * 1000)
    outcome = chain.seed(
        client,
        SETTINGS.key_prefix,
        endpoint.name,
        interval_ms=interval_ms,
        now_ms=now_ms(),
        stalled_after_ms=interval_ms + int(SETTINGS.watchdog_grace_s * 1000),
        lead_ms=lead_ms,
        expected_token=expected_token,
    )
    if outcome.started and outcome.first_slot_ms is not None:
        send_poll(endpoint.name, outcome.token, outcome.first_slot_ms, lead_ms)
    return outcome


@dramatiq.actor(queue_name=QUEUE_NAME, max_retries=0, time_limit=ACTOR_TIME_LIMIT_MS)
def poll_endpoint(name: str, token: str, slot_ms: int) -> None:
    """Claim one slot of an endpoint's chain, schedule the next and launch the poll.

    A message whose token is no longer current, or whose slot was already
    claimed, is dropped and counted: it is a stopped chain, a retry or a
    redelivery. Nothing that happens in the poll itself can end the chain,
    because the next slot is scheduled before the poll starts.
    """
    try:
        endpoint = SETTINGS.endpoint(name)
    except UnknownEndpointError:
        logger.warning(
            "Dropped a poll message for endpoint %r, which this worker's configuration does not define.",
            name,
        )
        return

    client = redis_client()
    interval_ms = int(endpoint.interval_s * 1000)
    plan = chain.plan_slot(slot_ms, now_ms(), interval_ms)
    try:
        outcome = chain.claim(
            client, SETTINGS.key_prefix, name, token, slot_ms, plan.missed
        )
        if outcome != "claimed":
            logger.debug(
                "Dropped %s message of endpoint %r for slot %d (token %s).",
                outcome,
                name,
                slot_ms,
                token,
            )
            return
        send_poll(name, token, plan.next_slot_ms, int(SETTINGS.dispatch_lead_s * 1000))
    except redis.RedisError as exc:
        _warn_redis_failure(
            "scheduling", name, slot_ms, exc, "the watchdog will re-seed the chain"
        )
        return

    if plan.missed:
        logger.warning(
            "Endpoint %r missed %d slots; the chain continues at slot %d.",
            name,
            plan.missed,
            plan.next_slot_ms,
        )
    if plan.poll:
        try:
            _launcher().submit(
                slot_ms / 1000, lambda: run_slot(endpoint, token, slot_ms)
            )
        except RuntimeError:
            logger.warning(
                "Worker is stopping, so slot %d of endpoint %r is not polled.",
                slot_ms,
                name,
            )


#: Seconds between two warnings about Redis failures in one process; the
#: failures in between are counted and reported with the next warning.
REDIS_WARNING_INTERVAL_S = 10.0

_redis_warnings = {"last": 0.0, "suppressed": 0}


def _warn_redis_failure(
    action: str, name: str, slot_ms: int, exc: Exception, consequence: str
) -> None:
    """Log a Redis failure at WARNING, at most once per ``REDIS_WARNING_INTERVAL_S``.

    With Redis down, every slot of every endpoint fails the same way; one line
    every few seconds with a count says as much as hundreds per second.
    """
    with _state_lock:
        now = time.monotonic()
        if now - _redis_warnings["last"] < REDIS_WARNING_INTERVAL_S:
            _redis_warnings["suppressed"] += 1
            return
        suppressed = int(_redis_warnings["suppressed"])
        _redis_warnings.update(last=now, suppressed=0)
    logger.warning(
        "Redis failed while %s endpoint %r slot %d (%s); %s. %d similar failures since the last warning.",
        action,
        name,
        slot_ms,
        describe(exc),
        consequence,
        suppressed,
    )


def run_slot(endpoint: Endpoint, token: str, slot_ms: int) -> None:
    """Poll a claimed slot at its due time and record the result.

    A failure of the fetch inside bts-sync is recorded as an ``internal``
    result and logged with its traceback; the launcher logs anything else it
    raises.
    """
    client = redis_client()
    prefix = SETTINGS.key_prefix
    lock_ms = int(endpoint.deadline_s * 1000) + _LOCK_MARGIN_MS
    try:
        start = chain.begin_poll(client, prefix, endpoint.name, token, slot_ms, lock_ms)
    except redis.RedisError as exc:
        _warn_redis_failure(
            "starting the poll of", endpoint.name, slot_ms, exc, "slot skipped"
        )
        return
    if start.outcome != "ok":
        _log_skipped(endpoint, slot_ms, start)
        return

    lateness_ms = time.time() * 1000 - slot_ms
    headers = politeness.conditional_headers(endpoint, start.etag, start.last_modified)
    try:
        result = fetch(endpoint, headers)
    except Exception as exc:
        logger.exception("Polling endpoint %r failed inside bts-sync.", endpoint.name)
        result = FetchResult(
            endpoint=endpoint.name,
            method=endpoint.method,
            url=mask_url(endpoint.url),
            started_at=slot_ms / 1000,
            elapsed_ms=0.0,
            error_kind="internal",
            error=f"Internal error in bts-sync: {type(exc).__name__}.",
        )

    _record(client, endpoint, result, slot_ms, lateness_ms, start.backoff_streak)


def _log_skipped(endpoint: Endpoint, slot_ms: int, start: chain.PollStart) -> None:
    if start.outcome in ("paused", "backing_off"):
        # Every slot of a pause is skipped, so these go to DEBUG; the pause
        # itself was logged at WARNING when it began.
        logger.debug(
            "Skipped slot %d of endpoint %r because it is %s until %s.",
            slot_ms,
            endpoint.name,
            "paused" if start.outcome == "paused" else "backing off",
            _clock_time(start.held_until_ms),
        )
        return
    reason = (
        "its chain was stopped"
        if start.outcome == "stopped"
        else "the previous poll is still running"
    )
    logger.info(
        "Skipped slot %d of endpoint %r because %s.", slot_ms, endpoint.name, reason
    )


def _clock_time(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "unknown"
    return time.strftime("%H:%M:%S", time.localtime(epoch_ms / 1000))


def _relevant_hash(endpoint: Endpoint, result: FetchResult) -> str | None:
    """Hash the content of a new body as the endpoint's paths define it."""
    if poll_outcome(result) != "ok":
        return None
    try:
        return changes.content_hash(
            result, endpoint.ignore_paths, endpoint.select_paths
        )
    except Exception:
        logger.exception(
            "Applying the JSON paths of endpoint %r failed; hashing the whole body instead.",
            endpoint.name,
        )
        return changes.content_hash(result)


def _describe_hold(hold: politeness.Hold, now: int) -> str:
    parts = []
    if hold.paused_until_ms is not None:
        parts.append(
            f" Paused for {(hold.paused_until_ms - now) / 1000:.1f} s (Retry-After)."
        )
    if hold.backoff_until_ms is not None:
        parts.append(
            f" Backing off for {max(0, hold.backoff_until_ms - now) / 1000:.1f} s "
            f"({hold.backoff_streak} unsuccessful in a row)."
        )
    return "".join(parts)


def _record(
    client: redis.Redis,
    endpoint: Endpoint,
    result: FetchResult,
    slot_ms: int,
    lateness_ms: float,
    streak_before: int,
) -> None:
    prefix = SETTINGS.key_prefix
    digest = _relevant_hash(endpoint, result)
    decided_ms = now_ms()
    hold = politeness.decide_hold(endpoint, result, streak_before, slot_ms, decided_ms)

    checked_s = time.time()

    def also(pipe: Any) -> None:
        chain.release_poll(pipe, client, prefix, endpoint.name, slot_ms)
        chain.queue_hold(pipe, prefix, endpoint.name, hold)
        hooks.queue_poll_checks(
            pipe, client, SETTINGS, endpoint.name, result, lateness_ms, checked_s
        )

    also_replies: list[Any] = []

    try:
        change = record_and_detect_change(
            client,
            prefix,
            endpoint.name,
            PollRecord(result=result, slot_ms=slot_ms, lateness_ms=lateness_ms),
            SETTINGS.history_length,
            digest=digest,
            also=also,
            also_replies=also_replies,
        )
    except redis.RedisError as exc:
        _warn_redis_failure("recording", endpoint.name, slot_ms, exc, "result lost")
        return

    fields = {
        "endpoint": endpoint.name,
        "slot": slot_ms,
        "status": result.status,
        "elapsed_ms": round(result.elapsed_ms, 1),
        "lateness_ms": round(lateness_ms, 1),
        "size": result.size,
        "changed": change is not None,
        "not_modified": result.not_modified,
        "error_kind": result.error_kind,
        "paused_until_ms": hold.paused_until_ms,
        "backoff_until_ms": hold.backoff_until_ms,
    }
    if result.ok:
        logger.info(
            "Polled endpoint %r: status %s in %.0f ms, %d bytes, %.1f ms late, %s.",
            endpoint.name,
            result.status,
            result.elapsed_ms,
            result.size,
            lateness_ms,
            "not modified"
            if result.not_modified
            else ("changed" if change is not None else "unchanged"),
            extra=fields,
        )
    elif result.error_kind == "rate_limited":
        logger.warning(
            "Endpoint %r rate-limited the poll: %s%s",
            endpoint.name,
            result.error,
            _describe_hold(hold, decided_ms),
            extra=fields,
        )
    else:
        logger.warning(
            "Poll of endpoint %r failed (%s): %s Took %.0f ms, %.1f ms late.%s",
            endpoint.name,
            result.error_kind,
            result.error,
            result.elapsed_ms,
            lateness_ms,
            _describe_hold(hold, decided_ms),
            extra=fields,
        )
    hooks.report_health(SETTINGS, endpoint.name, result, also_replies[-1], checked_s)

    if change is not None and endpoint.on_change is not None:
        deliver_change(broker, endpoint, result, change)


@dramatiq.actor(
    queue_name=QUEUE_NAME,
    max_retries=0,
    time_limit=ACTOR_TIME_LIMIT_MS,
    periodic=cron("* * * * *"),
)
def watchdog() -> None:
    """Re-seed every running chain that has claimed no slot for an interval plus the grace period.

    Each re-seed replaces only the token it saw, in one script, so two
    schedulers, or periodiq's extra run at start-up, re-seed a chain once.
    """
    reseed_stalled_chains(redis_client())


def reseed_stalled_chains(client: redis.Redis) -> list[str]:
    """Re-seed the stalled chains and return the names of those re-seeded here."""
    prefix = SETTINGS.key_prefix
    names = chain.running_names(client, prefix)
    states = chain.read_states(client, prefix, names)
    grace_ms = int(SETTINGS.watchdog_grace_s * 1000)
    reseeded = []
    stalled: dict[str, int] = {}
    for name, state in states.items():
        if not state.is_stalled(now_ms(), grace_ms) or state.token is None:
            continue
        stalled[name] = now_ms() - state.last_activity_ms()
        try:
            endpoint = SETTINGS.endpoint(name)
        except UnknownEndpointError:
            logger.warning(
                "Chain of endpoint %r is stalled, but this configuration does not define it; left alone.",
                name,
            )
            continue
        outcome = start_chain(client, endpoint, expected_token=state.token)
        if outcome.started:
            logger.warning(
                "Re-seeded the stalled chain of endpoint %r (token %s replaced by %s, last slot %s).",
                name,
                state.token,
                outcome.token,
                state.slot_ms,
            )
            reseeded.append(name)
    hooks.after_watchdog_check(client, SETTINGS, stalled)
    return reseeded
