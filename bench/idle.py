"""Idle: CPU of a worker and a scheduler that poll one endpoint every 3 s, next to the naive design.

Run from the repository root::

    python -m bench.idle --duration 60

It starts one redis-server per design, a ``bench.httpd`` server, and at the
same time ``dramatiq bts_sync.actors`` plus ``periodiq bts_sync.actors`` and
``dramatiq bench.naive_actors``, all with default settings. After a warm-up it
reads user plus system CPU time of each process tree from /proc/PID/stat at
the start and end of ``--duration`` seconds and prints it as a share of one
core. The naive design has no scheduler.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import common, httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=60, help="measured seconds (default 60)"
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

    workdir = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    with common.Children(workdir) as children:
        http_port, log_path = common.start_httpd(children, workdir)
        bts_redis, bts_redis_pid = common.start_redis(children, "redis-bts")
        naive_redis, naive_redis_pid = common.start_redis(children, "redis-naive")
        config = workdir / "bts-sync.toml"
        common.write_config(
            config, [("idle", f"http://127.0.0.1:{http_port}/bts/idle")], args.interval
        )
        endpoint_list = workdir / "naive.txt"
        common.write_endpoint_list(
            endpoint_list, [("idle", f"http://127.0.0.1:{http_port}/naive/idle")]
        )
        bts_env = common.bts_env(config, bts_redis)

        worker = children.start(
            "worker-bts", common.dramatiq_argv("bts_sync.actors", None, None), bts_env
        )
        scheduler = children.start(
            "scheduler", [str(common.BIN_DIR / "periodiq"), "bts_sync.actors"], bts_env
        )
        naive = children.start(
            "worker-naive",
            common.dramatiq_argv("bench.naive_actors", None, None),
            common.naive_env(naive_redis),
        )
        common.seed_bts(config, bts_redis)
        common.seed_naive(endpoint_list, naive_redis)
        print(
            f"Logs in {workdir}. Warming up for {args.warmup:.0f} s, then measuring for {args.duration:.0f} s.",
            flush=True,
        )
        time.sleep(args.warmup)
        meter = common.CpuMeter(
            {
                "worker": [worker.pid],
                "scheduler": [scheduler.pid],
                "naive": [naive.pid],
                "bts_redis": [bts_redis_pid],
                "naive_redis": [naive_redis_pid],
            }
        )
        meter.start()
        start_s = time.time()
        time.sleep(args.duration)
        end_s = time.time()
        meter.stop()
        processes = {
            label: len(common.descendants(pid))
            for label, pid in (("worker", worker.pid), ("naive", naive.pid))
        }
    time.sleep(0.1)

    arrivals = [
        path for t, path in httpd.read_arrivals([log_path]) if start_s <= t < end_s
    ]
    polls = {
        design: sum(1 for p in arrivals if p.startswith(f"/{design}/"))
        for design in ("bts", "naive")
    }
    share = {label: 100 * used / meter.wall_s for label, used in meter.used.items()}
    both = share["worker"] + share["scheduler"]
    print()
    print(
        f"Idle: one endpoint per design at {args.interval} s, {meter.wall_s:.0f} s measured, {common.machine_line()}. "
        f"Worker: Dramatiq defaults ({processes['worker']} processes including the main one); scheduler: periodiq defaults."
    )
    print()
    rows = [
        [
            "polls in the window",
            polls["bts"],
            polls["naive"],
            common.ratio(polls["bts"], polls["naive"]),
        ],
        [
            "worker CPU (% of a core)",
            share["worker"],
            share["naive"],
            common.ratio(share["worker"], share["naive"]),
        ],
        ["scheduler CPU (% of a core)", share["scheduler"], "n/a (none)", "n/a"],
        [
            "worker + scheduler CPU (% of a core)",
            both,
            share["naive"],
            common.ratio(both, share["naive"]),
        ],
        [
            "redis-server CPU (% of a core)",
            share["bts_redis"],
            share["naive_redis"],
            common.ratio(share["bts_redis"], share["naive_redis"]),
        ],
    ]
    print(
        common.markdown_table(
            ["measure", "bts-sync", "naive", "bts-sync / naive"], rows
        )
    )


if __name__ == "__main__":
    main()
