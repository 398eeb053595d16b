"""Scale: many endpoints at 3 s on one machine, bts-sync against the naive design.

Run from the repository root::

    python -m bench.scale --endpoints 2000 --duration 120

The designs take turns (bts-sync, naive, and again with ``--rounds 2``), each
phase with a fresh redis-server and worker, so that neither competes with
the other for the CPU. All phases share one HTTP server: ``--http-processes``
copies of ``bench.httpd`` on one port. A probe thread times a GET of that
server every 200 ms to show whether it keeps up.

Each phase seeds every chain, waits ``--warmup`` seconds, and then measures
for ``--duration`` seconds. It reports the share of slots polled, offsets from
the grid, and the workers' resident memory at the end. CPU time (user plus
system, from /proc/PID/stat) is read for the worker processes, redis-server
and the HTTP server. With ``--profile S``, ``py-spy record --gil`` samples one
worker process of each bts-sync phase for S seconds and the top functions are
printed; the sampling slows the worker, so profiled figures are not the
benchmark's.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import common, httpd
from bts_sync.chain import grid_phase_ms


def grid_report(
    arrivals: list[tuple[float, str]],
    names: list[str],
    interval_ms: int,
    start_s: float,
    end_s: float,
) -> dict[str, float]:
    """Compare bts-sync's arrivals with the grid slots that fall inside the window."""
    start_ms, end_ms = start_s * 1000, end_s * 1000
    phases = {name: grid_phase_ms(name, interval_ms) for name in names}
    expected = 0
    for phase in phases.values():
        first = math.ceil((start_ms - phase) / interval_ms)
        last = math.ceil((end_ms - phase) / interval_ms)
        expected += last - first
    polled: collections.Counter[tuple[str, int]] = collections.Counter()
    offsets = []
    for arrived_s, path in arrivals:
        name = path.rsplit("/", 1)[-1]
        phase = phases.get(name)
        if phase is None:
            continue
        arrived_ms = arrived_s * 1000
        slot = common.slot_of(arrived_ms, phase, interval_ms)
        if start_ms <= slot < end_ms:
            polled[(name, slot)] += 1
            offsets.append(arrived_ms - slot)
    return {
        "expected": expected,
        "polled": len(polled),
        "share": len(polled) / expected if expected else math.nan,
        "duplicates": sum(count - 1 for count in polled.values()),
        "offset_p50": common.percentile(offsets, 50),
        "offset_p99": common.percentile(offsets, 99),
        "offset_max": max(offsets, default=math.nan),
    }


def naive_report(
    arrivals: list[tuple[float, str]],
    names: list[str],
    interval_ms: int,
    start_s: float,
    end_s: float,
) -> dict[str, float]:
    """Count the naive arrivals inside the window against one poll per interval."""
    wanted = set(names)
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    for arrived_s, path in arrivals:
        name = path.rsplit("/", 1)[-1]
        if name in wanted and start_s <= arrived_s < end_s:
            by_name[name].append(arrived_s)
    periods = [
        (b - a) * 1000
        for times in by_name.values()
        for a, b in itertools.pairwise(times)
    ]
    expected = len(names) * (end_s - start_s) * 1000 / interval_ms
    polls = sum(len(times) for times in by_name.values())
    return {
        "expected": expected,
        "polled": polls,
        "share": polls / expected,
        "duplicates": math.nan,
        "period_p50": common.percentile(periods, 50),
        "period_p99": common.percentile(periods, 99),
    }


def top_frames(raw_profile: Path, limit: int = 20) -> str:
    """Summarize a py-spy ``--format raw`` profile as the share of samples per function.

    Line numbers are dropped, so each function appears once; frames of the
    threading module are left out because every thread starts in them.
    """
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        for function in set(functions):
            inclusive[function] += count
        own[functions[-1]] += count

    rows = []
    for function, samples in inclusive.most_common():
        if "(threading.py)" in function:
            continue
        rows.append(
            [
                function[:100],
                f"{100 * samples / total:.1f} %",
                f"{100 * own[function] / total:.1f} %",
            ]
        )
        if len(rows) == limit:
            break
    return common.markdown_table(["function", "inclusive", "own"], rows)


def command_counts(redis_url: str) -> dict[str, int]:
    """Return the calls per command from redis-server's ``INFO commandstats``."""
    client = redis.Redis.from_url(redis_url)
    try:
        stats: Any = client.info("commandstats")
    finally:
        client.close()
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
    }


def run_phase(
    children: common.Children,
    design: str,
    names: list[str],
    http_port: int,
    http_pids: list[int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run one design for warm-up plus duration and return its figures."""
    workdir = children.workdir
    label = f"{design}-{int(time.time())}"
    redis_url, redis_pid = common.start_redis(children, f"redis-{label}")
    endpoints = [
        (name, f"http://127.0.0.1:{http_port}/{design}/{name}") for name in names
    ]
    if design == "bts":
        config = workdir / f"{label}.toml"
        common.write_config(config, endpoints, args.interval)
        env = common.bts_env(config, redis_url)
        argv = common.dramatiq_argv("bts_sync.actors", args.processes, args.threads)
    else:
        endpoint_list = workdir / f"{label}.txt"
        common.write_endpoint_list(endpoint_list, endpoints)
        env = common.naive_env(redis_url)
        argv = common.dramatiq_argv("bench.naive_actors", args.processes, args.threads)
    worker = children.start(f"worker-{label}", argv, env)
    if design == "bts":
        common.seed_bts(config, redis_url)
    else:
        common.seed_naive(endpoint_list, redis_url)

    print(
        f"{design}: warming up for {args.warmup:.0f} s, logs in {workdir}", flush=True
    )
    time.sleep(args.warmup)
    meter = common.CpuMeter(
        {"worker": [worker.pid], "redis": [redis_pid], "http": http_pids}
    )
    meter.start()
    commands_before = command_counts(redis_url)
    start_s = time.time()
    profile_path = None
    if args.profile and design == "bts":
        worker_children = common.children_of(worker.pid)
        if worker_children:
            profile_path = workdir / f"profile-{label}.txt"
            children.start(
                f"py-spy-{label}",
                [
                    str(common.BIN_DIR / "py-spy"),
                    "record",
                    "--pid",
                    str(worker_children[0]),
                    "--duration",
                    str(int(args.profile)),
                    "--rate",
                    "100",
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(profile_path),
                ],
            )
    time.sleep(args.duration)
    end_s = time.time()
    meter.stop()
    commands_after = command_counts(redis_url)
    worker_pids = common.descendants(worker.pid)
    rss = common.rss_mib(worker_pids)
    children.stop(worker)
    # Requests of slots just before the window's end may arrive a little later.
    time.sleep(1.5)

    log_paths = sorted(workdir.glob("arrivals-*.txt"))
    arrivals = [
        (t, path)
        for t, path in httpd.read_arrivals(log_paths)
        if path.startswith(f"/{design}/") and start_s - 5 <= t < end_s + 5
    ]
    report = (grid_report if design == "bts" else naive_report)(
        arrivals, names, int(args.interval * 1000), start_s, end_s
    )
    polls = sum(1 for t, _ in arrivals if start_s <= t < end_s)
    report.update(
        design=design,
        polls_per_s=polls / (end_s - start_s),
        worker_ms_per_poll=1000 * meter.used["worker"] / polls if polls else math.nan,
        redis_ms_per_poll=1000 * meter.used["redis"] / polls if polls else math.nan,
        worker_core=meter.used["worker"] / meter.wall_s,
        redis_core=meter.used["redis"] / meter.wall_s,
        http_core=meter.used["http"] / meter.wall_s,
        worker_rss=rss,
        worker_processes=len(worker_pids) - 1,
        load_average=float(common.load_average()),
        commands={
            name: calls - commands_before.get(name, 0)
            for name, calls in commands_after.items()
            if calls > commands_before.get(name, 0)
        },
        profile=profile_path,
    )
    report["commands_per_poll"] = (
        sum(report["commands"].values()) / polls if polls else math.nan
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--endpoints",
        type=int,
        default=2000,
        help="endpoints per design (default 2000)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=120,
        help="measured seconds per phase (default 120)",
    )
    parser.add_argument(
        "--warmup", type=float, default=20, help="seconds before measuring (default 20)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=3.0,
        help="poll interval in seconds (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="phases per design, alternating (default 1)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes (default: Dramatiq's, the CPU count)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="worker threads per process (default: Dramatiq's, 8)",
    )
    parser.add_argument(
        "--designs",
        default="bts,naive",
        help="comma-separated designs run in each round, in order (default bts,naive)",
    )
    parser.add_argument(
        "--http-processes",
        type=int,
        default=2,
        help="HTTP server processes (default 2)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0,
        help="seconds of py-spy sampling per bts-sync phase (default 0: off)",
    )
    args = parser.parse_args()

    names = [f"e{i:05d}" for i in range(args.endpoints)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    reports = []
    with common.Children(workdir) as children:
        http_port = common.free_port()
        http_pids = [
            children.start(
                f"httpd-{i}",
                [
                    str(common.BIN_DIR / "python"),
                    "-m",
                    "bench.httpd",
                    str(http_port),
                    str(workdir / f"arrivals-{i}.txt"),
                ],
            ).pid
            for i in range(args.http_processes)
        ]
        common.wait_for_port(http_port)
        with common.LatencyProbe(http_port) as probe:
            for _ in range(args.rounds):
                for design in args.designs.split(","):
                    reports.append(
                        run_phase(children, design, names, http_port, http_pids, args)
                    )
    print_report(reports, args, probe)


def print_report(
    reports: list[dict[str, Any]], args: argparse.Namespace, probe: common.LatencyProbe
) -> None:
    """Print one column per phase and the bts-sync to naive ratios of the medians."""
    processes = args.processes or "Dramatiq default (CPU count)"
    threads = args.threads or "Dramatiq default (8)"
    print()
    print(
        f"Scale: {args.endpoints} endpoints per design at {args.interval} s, {args.duration:.0f} s measured per phase, "
        f"{common.machine_line()}. Worker processes: {processes}, threads: {threads}."
    )
    print(
        f"HTTP server: {args.http_processes} processes; probe round trip p50 {common.percentile(probe.rtts_ms, 50):.2f} ms, "
        f"p99 {common.percentile(probe.rtts_ms, 99):.2f} ms, max {max(probe.rtts_ms, default=math.nan):.2f} ms, "
        f"{probe.failures} failed probes."
    )
    print()
    rows_spec = [
        ("share of slots polled (%)", "share", 100),
        ("polls per second", "polls_per_s", 1),
        ("slots polled twice", "duplicates", 1),
        ("offset from slot p50 (ms)", "offset_p50", 1),
        ("offset from slot p99 (ms)", "offset_p99", 1),
        ("offset from slot max (ms)", "offset_max", 1),
        ("period p50 (ms)", "period_p50", 1),
        ("period p99 (ms)", "period_p99", 1),
        ("Redis commands per poll", "commands_per_poll", 1),
        ("worker CPU per poll (ms)", "worker_ms_per_poll", 1),
        ("redis-server CPU per poll (ms)", "redis_ms_per_poll", 1),
        ("worker CPU (% of a core)", "worker_core", 100),
        ("redis-server CPU (% of a core)", "redis_core", 100),
        ("HTTP server CPU (% of a core)", "http_core", 100),
        ("worker RSS, all processes (MiB)", "worker_rss", 1),
        ("worker processes", "worker_processes", 1),
        ("machine load average at the end (1 min)", "load_average", 1),
    ]
    headers = (
        ["measure"]
        + [f"{r['design']} #{i // 2 + 1}" for i, r in enumerate(reports)]
        + ["bts-sync / naive (medians)"]
    )
    rows = []
    for title, key, scale in rows_spec:
        values = [r.get(key, math.nan) * scale for r in reports]
        bts = [
            v
            for r, v in zip(reports, values, strict=True)
            if r["design"] == "bts" and not math.isnan(v)
        ]
        naive = [
            v
            for r, v in zip(reports, values, strict=True)
            if r["design"] == "naive" and not math.isnan(v)
        ]
        rows.append(
            [
                title,
                *values,
                common.ratio(common.percentile(bts, 50), common.percentile(naive, 50)),
            ]
        )
    print(common.markdown_table(headers, rows))
    print()
    print("Redis commands per poll, from INFO commandstats over the measured window:")
    print()
    names = sorted({name for report in reports for name in report["commands"]})
    polls = [report["polls_per_s"] * args.duration for report in reports]
    command_rows = [
        [
            name,
            *(
                r["commands"].get(name, 0) / n
                for r, n in zip(reports, polls, strict=True)
            ),
        ]
        for name in names
    ]
    print(common.markdown_table(["command", *headers[1:-1]], command_rows))

    for report in reports:
        if report.get("profile") and Path(report["profile"]).exists():
            print()
            print(
                f"py-spy, one bts-sync worker process, {args.profile:.0f} s (share of the samples that held the GIL):"
            )
            print()
            print(top_frames(Path(report["profile"])))


if __name__ == "__main__":
    main()
