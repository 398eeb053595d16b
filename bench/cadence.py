"""Cadence: how close to its grid one endpoint is polled, next to the naive design.

Run from the repository root::

    python -m bench.cadence --duration 300

It starts one redis-server per design, a threaded HTTP server on 127.0.0.1
that logs each request's arrival time, ``dramatiq bts_sync.actors`` and
``dramatiq bench.naive_actors`` with Dramatiq's default settings, and one
endpoint per design at the same interval. Both run at the same time for
``--duration`` seconds after a warm-up.

bts-sync's slots are ``phase + k * interval`` with ``phase = crc32(name) %
interval_ms`` (``bts_sync.chain.grid_phase_ms``), so each arrival's offset is
its distance from the nearest slot, and drift is the least-squares slope of
that offset over time. The naive design has no grid: its drift is how much
longer than the interval each period is, and its lost polls are the slots of
an ideal 3 s cadence that it did not fill.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench import common
from bts_sync.chain import grid_phase_ms

ENDPOINT_NAME = "cadence"


class ArrivalLog:
    """Arrival times (Unix seconds) of requests, by URL path."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_path: dict[str, list[float]] = {}

    def add(self, path: str, arrived_s: float) -> None:
        with self.lock:
            self.by_path.setdefault(path, []).append(arrived_s)


def start_http_server(log: ArrivalLog) -> tuple[ThreadingHTTPServer, int]:
    """Serve a small JSON body on a free loopback port and log each arrival."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            log.add(self.path, time.time())
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def grid_stats(arrivals_s: list[float], interval_ms: int) -> dict[str, float]:
    """Measure bts-sync's arrivals against its grid."""
    phase = grid_phase_ms(ENDPOINT_NAME, interval_ms)
    times_ms = [t * 1000 for t in arrivals_s]
    slots = [common.slot_of(t, phase, interval_ms) for t in times_ms]
    offsets = [t - s for t, s in zip(times_ms, slots, strict=True)]
    expected = (slots[-1] - slots[0]) // interval_ms + 1 if slots else 0
    hours = [(t - times_ms[0]) / 3_600_000 for t in times_ms]
    return {
        "polls": len(times_ms),
        "duplicates": len(slots) - len(set(slots)),
        "lost": expected - len(set(slots)),
        "drift_ms_per_hour": common.slope(hours, offsets),
        "drift_ms_per_period": common.slope(hours, offsets) * interval_ms / 3_600_000,
        "offset_p50": common.percentile(offsets, 50),
        "offset_p99": common.percentile(offsets, 99),
        "offset_max": max((abs(o) for o in offsets), default=float("nan")),
    }


def period_stats(
    arrivals_s: list[float], interval_ms: int, window_s: float
) -> dict[str, float]:
    """Measure the periods between arrivals against the interval."""
    periods = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals_s)]
    deviations = [p - interval_ms for p in periods]
    ideal = window_s * 1000 / interval_ms
    return {
        "drift_per_period": common.percentile(deviations, 50),
        "period_p50": common.percentile(periods, 50),
        "period_p99": common.percentile(periods, 99),
        "period_max": max(periods, default=float("nan")),
        "lost_share": 1 - len(arrivals_s) / ideal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=300, help="measured seconds (default 300)"
    )
    parser.add_argument(
        "--warmup", type=float, default=15, help="seconds before measuring (default 15)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="poll interval in seconds (default 3)",
    )
    args = parser.parse_args()
    interval_ms = int(args.interval * 1000)

    workdir = Path(tempfile.mkdtemp(prefix="bench-cadence-"))
    log = ArrivalLog()
    server, port = start_http_server(log)
    bts_path = f"/bts/{ENDPOINT_NAME}"
    naive_path = f"/naive/{ENDPOINT_NAME}"
    with common.Children(workdir) as children:
        bts_redis, _ = common.start_redis(children, "redis-bts")
        naive_redis, _ = common.start_redis(children, "redis-naive")
        config = workdir / "bts-sync.toml"
        common.write_config(
            config,
            [(ENDPOINT_NAME, f"http://127.0.0.1:{port}{bts_path}")],
            args.interval,
        )
        naive_list = workdir / "naive.txt"
        common.write_endpoint_list(
            naive_list, [(ENDPOINT_NAME, f"http://127.0.0.1:{port}{naive_path}")]
        )

        children.start(
            "worker-bts",
            common.dramatiq_argv("bts_sync.actors", None, None),
            common.bts_env(config, bts_redis),
        )
        children.start(
            "worker-naive",
            common.dramatiq_argv("bench.naive_actors", None, None),
            common.naive_env(naive_redis),
        )
        common.seed_bts(config, bts_redis)
        common.seed_naive(naive_list, naive_redis)

        print(
            f"Logs in {workdir}. Warming up for {args.warmup:.0f} s, then measuring for {args.duration:.0f} s."
        )
        time.sleep(args.warmup)
        window_start = time.time()
        time.sleep(args.duration)
        window_end = time.time()
    server.shutdown()

    def in_window(path: str) -> list[float]:
        return sorted(
            t for t in log.by_path.get(path, []) if window_start <= t < window_end
        )

    bts = in_window(bts_path)
    naive = in_window(naive_path)
    window_s = window_end - window_start
    grid = grid_stats(bts, interval_ms)
    bts_periods = period_stats(bts, interval_ms, window_s)
    naive_periods = period_stats(naive, interval_ms, window_s)

    print()
    print(
        f"Cadence, {window_s:.0f} s measured, interval {args.interval} s, {common.machine_line()}."
    )
    print(
        "Workers: Dramatiq defaults (processes = CPU count, 8 threads, worker_timeout 1000 ms)."
    )
    print()
    print(
        common.markdown_table(
            ["measure", "bts-sync", "naive", "bts-sync / naive"],
            [
                [
                    "polls",
                    grid["polls"],
                    len(naive),
                    common.ratio(grid["polls"], len(naive)),
                ],
                [
                    "lost polls (share of 3 s slots)",
                    bts_periods["lost_share"],
                    naive_periods["lost_share"],
                    "n/a",
                ],
                ["slots polled twice", grid["duplicates"], "n/a (no slots)", "n/a"],
                [
                    "drift of offset (ms per hour)",
                    grid["drift_ms_per_hour"],
                    "n/a (no grid)",
                    "n/a",
                ],
                [
                    "drift of offset (ms per period)",
                    grid["drift_ms_per_period"],
                    "n/a (no grid)",
                    "n/a",
                ],
                [
                    "median period minus interval (ms)",
                    bts_periods["drift_per_period"],
                    naive_periods["drift_per_period"],
                    "n/a",
                ],
                [
                    "period p50 (ms)",
                    bts_periods["period_p50"],
                    naive_periods["period_p50"],
                    common.ratio(
                        bts_periods["period_p50"], naive_periods["period_p50"]
                    ),
                ],
                [
                    "period p99 (ms)",
                    bts_periods["period_p99"],
                    naive_periods["period_p99"],
                    common.ratio(
                        bts_periods["period_p99"], naive_periods["period_p99"]
                    ),
                ],
                [
                    "period max (ms)",
                    bts_periods["period_max"],
                    naive_periods["period_max"],
                    common.ratio(
                        bts_periods["period_max"], naive_periods["period_max"]
                    ),
                ],
                [
                    "offset from slot p50 (ms)",
                    grid["offset_p50"],
                    "n/a (no grid)",
                    "n/a",
                ],
                [
                    "offset from slot p99 (ms)",
                    grid["offset_p99"],
                    "n/a (no grid)",
                    "n/a",
                ],
                [
                    "offset from slot, max of abs (ms)",
                    grid["offset_max"],
                    "n/a (no grid)",
                    "n/a",
                ],
            ],
        )
    )
    if os.environ.get("BENCH_DUMP_ARRIVALS"):
        (workdir / "arrivals.txt").write_text(
            "".join(f"{p} {t:.6f}\n" for p, ts in log.by_path.items() for t in ts)
        )


if __name__ == "__main__":
    main()
