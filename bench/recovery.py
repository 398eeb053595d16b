"""Recovery: SIGKILL every worker process, restart 5 s later, and time until every chain polls again.

Run from the repository root::

    python -m bench.recovery --chains 500

bts-sync and the naive design run at the same time, each with ``--chains``
chains at 3 s, its own redis-server and a worker with Dramatiq's default
settings. bts-sync also has its real scheduler, ``periodiq bts_sync.actors``,
which sends the watchdog at the start of every minute. All requests go to one
``bench.httpd`` server that logs their arrival.

After ``--steady`` seconds of normal running, both workers get SIGKILL (the
main process and every worker process) at ``--kill-second`` seconds past a
wall-clock minute, and both are started again ``--down`` seconds later. The
kill second sets where the stall falls relative to the watchdog's minute, so
it sets the recovery time: with the default grace of 10 s, a chain counts as
stalled 13 s after its last claimed slot, and a kill at second 50 makes the
next watchdog run after that come about 70 s later.

Reported: the time from the kill until every chain has polled again, the
slots polled twice (bts-sync) or pairs of polls of one endpoint less than half
an interval apart (naive), and the peak poll rate during recovery: the most
requests in any window of one interval, from the kill until every chain has
polled again plus one interval, over the mean rate before the kill. The same
peak over the steady period before the kill shows how far this measure rises
with jitter alone.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import itertools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, httpd
from bts_sync.chain import grid_phase_ms


def wait_for_kill_moment(kill_second: float, not_before_s: float) -> None:
    """Sleep until the first wall-clock time at ``kill_second`` past a minute after ``not_before_s``."""
    minute = math.floor(not_before_s / 60) * 60
    target = minute + kill_second
    while target < not_before_s:
        target += 60
    time.sleep(max(0.0, target - time.time()))


def peak_rate(
    times_s: list[float], start_s: float, end_s: float, window_s: float
) -> float:
    """Return the largest number of arrivals in any window of ``window_s`` seconds, per second."""
    times = [t for t in times_s if start_s <= t < end_s]
    best = 0
    for index, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + window_s) - index)
    return best / window_s


def analyse(
    design: str,
    arrivals: list[tuple[float, str]],
    names: list[str],
    interval_s: float,
    steady_start_s: float,
    kill_s: float,
    end_s: float,
) -> dict[str, Any]:
    """Compute recovery time, duplicates and rates for one design's arrivals."""
    interval_ms = int(interval_s * 1000)
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for arrived_s, path in arrivals:
        if path.startswith(f"/{design}/"):
            by_name[path.rsplit("/", 1)[-1]].append(arrived_s)

    first_after_kill = []
    for name in names:
        after = [t for t in by_name.get(name, []) if t > kill_s]
        if after:
            first_after_kill.append(after[0] - kill_s)
    recovered = len(first_after_kill)

    if design == "bts":
        slots: collections.Counter[tuple[str, int]] = collections.Counter()
        for name, times in by_name.items():
            phase = grid_phase_ms(name, interval_ms)
            for t in times:
                slot = common.slot_of(t * 1000, phase, interval_ms)
                slots[(name, slot)] += 1
        duplicates = sum(count - 1 for count in slots.values())
    else:
        duplicates = sum(
            1
            for times in by_name.values()
            for a, b in itertools.pairwise(times)
            if b - a < interval_s / 2
        )

    all_times = sorted(t for times in by_name.values() for t in times)
    steady = sum(1 for t in all_times if steady_start_s <= t < kill_s) / (
        kill_s - steady_start_s
    )
    all_back_s = max(first_after_kill) if recovered == len(names) else math.nan
    # Recovery lasts until every chain has polled again, plus one interval to
    # catch a burst right after. A design that never recovers is watched to the end.
    recovery_end_s = (
        end_s if math.isnan(all_back_s) else kill_s + all_back_s + interval_s
    )
    peak = peak_rate(all_times, kill_s, recovery_end_s, interval_s)
    steady_peak = peak_rate(all_times, steady_start_s, kill_s, interval_s)
    return {
        "design": design,
        "recovered": recovered,
        "all_back_s": all_back_s,
        "median_back_s": common.percentile(first_after_kill, 50),
        "duplicates": duplicates,
        "steady_rate": steady,
        "steady_peak_ratio": steady_peak / steady if steady else math.nan,
        "peak_rate": peak,
        "peak_ratio": peak / steady if steady else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--chains", type=int, default=500, help="chains per design (default 500)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="poll interval in seconds (default 3)",
    )
    parser.add_argument(
        "--steady",
        type=float,
        default=45,
        help="seconds of steady running measured before the kill (default 45)",
    )
    parser.add_argument(
        "--kill-second",
        type=float,
        default=50,
        help="seconds past the minute at which the workers are killed (default 50)",
    )
    parser.add_argument(
        "--down",
        type=float,
        default=5,
        help="seconds between the kill and the restart (default 5)",
    )
    parser.add_argument(
        "--observe",
        type=float,
        default=150,
        help="seconds watched after the kill (default 150)",
    )
    args = parser.parse_args()

    names = [f"r{i:04d}" for i in range(args.chains)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    with common.Children(workdir) as children:
        http_port, log_path = common.start_httpd(children, workdir)

        bts_redis, _ = common.start_redis(children, "redis-bts")
        naive_redis, _ = common.start_redis(children, "redis-naive")
        config = workdir / "bts-sync.toml"
        common.write_config(
            config,
            [(n, f"http://127.0.0.1:{http_port}/bts/{n}") for n in names],
            args.interval,
        )
        endpoint_list = workdir / "naive.txt"
        common.write_endpoint_list(
            endpoint_list,
            [(n, f"http://127.0.0.1:{http_port}/naive/{n}") for n in names],
        )
        bts_env = common.bts_env(config, bts_redis)
        naive_env = common.naive_env(naive_redis)
        bts_argv = common.dramatiq_argv("bts_sync.actors", None, None)
        naive_argv = common.dramatiq_argv("bench.naive_actors", None, None)

        children.start(
            "scheduler", [str(common.BIN_DIR / "periodiq"), "bts_sync.actors"], bts_env
        )
        bts_worker = children.start("worker-bts-1", bts_argv, bts_env)
        naive_worker = children.start("worker-naive-1", naive_argv, naive_env)
        common.seed_bts(config, bts_redis)
        common.seed_naive(endpoint_list, naive_redis)

        print(
            f"Logs in {workdir}. Warming up, then {args.steady:.0f} s steady before the kill.",
            flush=True,
        )
        time.sleep(15)
        steady_start = time.time()
        wait_for_kill_moment(args.kill_second, steady_start + args.steady)
        for worker in (bts_worker, naive_worker):
            common.remember_descendants(worker.pid)
        kill_s = time.time()
        killed = common.kill_tree(bts_worker.pid) + common.kill_tree(naive_worker.pid)
        for worker in (bts_worker, naive_worker):
            worker.wait(5)
        print(
            f"Killed {len(killed)} worker processes (PIDs {killed}); restarting in {args.down:.0f} s.",
            flush=True,
        )
        time.sleep(args.down)
        children.start("worker-bts-2", bts_argv, bts_env)
        children.start("worker-naive-2", naive_argv, naive_env)
        time.sleep(max(0.0, kill_s + args.observe - time.time()))
        end_s = time.time()

    arrivals = httpd.read_arrivals([log_path])
    reports = [
        analyse(design, arrivals, names, args.interval, steady_start, kill_s, end_s)
        for design in ("bts", "naive")
    ]
    print_report(reports, args, kill_s)


def print_report(
    reports: list[dict[str, Any]], args: argparse.Namespace, kill_s: float
) -> None:
    """Print the figures of both designs and their ratios."""
    bts, naive = reports
    kill_clock = time.strftime("%H:%M:%S", time.localtime(kill_s))
    print()
    print(
        f"Recovery: {args.chains} chains per design at {args.interval} s, SIGKILL of every worker process at "
        f"{kill_clock} ({args.kill_second:.0f} s past the minute), restart {args.down:.0f} s later, "
        f"{args.observe:.0f} s observed, {common.machine_line()}. Workers: Dramatiq defaults; "
        "bts-sync scheduler: periodiq bts_sync.actors."
    )
    print()
    rows = [
        [
            "chains polled again after the kill",
            f"{bts['recovered']} / {args.chains}",
            f"{naive['recovered']} / {args.chains}",
            common.ratio(bts["recovered"], naive["recovered"]),
        ],
        [
            "time until every chain polled again (s)",
            bts["all_back_s"],
            naive["all_back_s"],
            common.ratio(bts["all_back_s"], naive["all_back_s"]),
        ],
        [
            "median time until a chain polled again (s)",
            bts["median_back_s"],
            naive["median_back_s"],
            common.ratio(bts["median_back_s"], naive["median_back_s"]),
        ],
        ["duplicate polls", bts["duplicates"], naive["duplicates"], "n/a"],
        [
            "steady poll rate before the kill (per s)",
            bts["steady_rate"],
            naive["steady_rate"],
            common.ratio(bts["steady_rate"], naive["steady_rate"]),
        ],
        [
            f"peak poll rate during recovery, {args.interval:.0f} s window (per s)",
            bts["peak_rate"],
            naive["peak_rate"],
            common.ratio(bts["peak_rate"], naive["peak_rate"]),
        ],
        [
            "peak / steady, during recovery",
            bts["peak_ratio"],
            naive["peak_ratio"],
            common.ratio(bts["peak_ratio"], naive["peak_ratio"]),
        ],
        [
            "peak / steady, before the kill (noise of this measure)",
            bts["steady_peak_ratio"],
            naive["steady_peak_ratio"],
            common.ratio(bts["steady_peak_ratio"], naive["steady_peak_ratio"]),
        ],
    ]
    print(
        common.markdown_table(
            ["measure", "bts-sync", "naive", "bts-sync / naive"], rows
        )
    )
    print()
    print(
        "Duplicate polls: bts-sync counts grid slots polled twice; the naive design has no slots, so it counts pairs of polls of one endpoint less than half an interval apart."
    )


if __name__ == "__main__":
    main()
