"""Helpers shared by the benchmarks: child processes, redis-server, CPU accounting, tables.

Every process a benchmark starts goes through ``Children``, which stops it by
PID when the benchmark ends, also on Ctrl+C or an exception. Children run in
their own sessions, so a Ctrl+C in the terminal reaches only the benchmark,
which then stops them in order.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

#: Root of the repository; the workers run from here so ``bench.*`` imports.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Folder of the running interpreter's scripts (dramatiq, periodiq, bts-sync).
BIN_DIR = Path(sys.executable).parent

#: Ticks per second of the utime and stime fields in /proc/PID/stat.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Seconds a child gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"Nothing listened on 127.0.0.1:{port} within {timeout_s} s.")


class Children:
    """Processes started by a benchmark, each stopped by its PID on exit.

    Args:
        workdir: Folder for the children's log files.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(
        self, label: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` from the repository root with output in ``workdir/label.log``."""
        log = (self.workdir / f"{label}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """Send SIGTERM to the process, and SIGKILL to it and its children if it lingers."""
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait(5)
        # A killed main process can leave worker processes behind, so they
        # are killed one by one by PID.
        for pid in orphans_of(process.pid):
            kill_pid(pid)

    def stop_all(self) -> None:
        """Stop every started process, newest first, and close the log files."""
        for process in reversed(self._processes):
            try:
                self.stop(process)
            except Exception as exc:
                print(f"Could not stop PID {process.pid}: {exc}", file=sys.stderr)
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


def _read_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in brackets and may contain spaces.
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """Return the PIDs whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Return ``pid`` and every live process below it."""
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(children_of(found[index]))
        index += 1
    return [p for p in found if Path(f"/proc/{p}").exists()]


#: PIDs of the descendants of each process started here, remembered so that
#: processes orphaned by a SIGKILL of their parent can still be found.
_known_descendants: dict[int, set[int]] = {}


def remember_descendants(pid: int) -> list[int]:
    """Return ``descendants(pid)`` and remember them for ``orphans_of``."""
    pids = descendants(pid)
    _known_descendants.setdefault(pid, set()).update(pids)
    return pids


def orphans_of(pid: int) -> list[int]:
    """Return remembered descendants of ``pid`` that still run."""
    return [p for p in _known_descendants.get(pid, ()) if _is_alive(p)]


def _is_alive(pid: int) -> bool:
    fields = _read_stat(pid)
    return fields is not None and fields[0] != "Z"


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to one PID, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_tree(pid: int) -> list[int]:
    """Send SIGKILL to ``pid`` and every process below it; return the PIDs."""
    pids = remember_descendants(pid)
    for target in pids:
        kill_pid(target)
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """Sum user plus system CPU seconds of the live processes among ``pids``."""
    total = 0
    for pid in pids:
        fields = _read_stat(pid)
        if fields is not None:
            # utime and stime are fields 14 and 15 of /proc/PID/stat.
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_mib(pids: Iterable[int]) -> float:
    """Sum the resident set size of the live processes among ``pids``, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def start_httpd(children: Children, workdir: Path, index: int = 0) -> tuple[int, Path]:
    """Start ``bench/httpd.py`` on a free port; return the port and its arrival log."""
    port = free_port()
    log_path = workdir / f"arrivals-{index}.txt"
    children.start(
        f"httpd-{index}" if index else "httpd",
        [str(BIN_DIR / "python"), "-m", "bench.httpd", str(port), str(log_path)],
    )
    wait_for_port(port)
    return port, log_path


def start_redis(children: Children, label: str) -> tuple[str, int]:
    """Start a private redis-server on a free loopback port; return its URL and PID."""
    port = free_port()
    data_dir = children.workdir / label
    data_dir.mkdir(exist_ok=True)
    process = children.start(
        label,
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
        ],
    )
    wait_for_port(port)
    return f"redis://127.0.0.1:{port}/0", process.pid


def write_config(
    path: Path, endpoints: Sequence[tuple[str, str]], interval_s: float
) -> None:
    """Write a bts-sync TOML file with one ``[[endpoints]]`` table per (name, URL)."""
    lines = []
    for name, url in endpoints:
        lines += [
            "[[endpoints]]",
            f'name = "{name}"',
            f'url = "{url}"',
            f"interval = {interval_s}",
            "",
        ]
    path.write_text("\n".join(lines))


def write_endpoint_list(path: Path, endpoints: Sequence[tuple[str, str]]) -> None:
    """Write ``name URL`` lines, the input of ``python -m bench.naive_actors``."""
    path.write_text("".join(f"{name} {url}\n" for name, url in endpoints))


def bts_env(config: Path, redis_url: str) -> dict[str, str]:
    """Return the environment that points bts-sync at ``config`` and ``redis_url``."""
    return {"BTS_SYNC_CONFIG": str(config), "BTS_SYNC_REDIS_URL": redis_url}


def naive_env(redis_url: str) -> dict[str, str]:
    """Return the environment that points the naive actors at ``redis_url``."""
    return {"NAIVE_REDIS_URL": redis_url}


def dramatiq_argv(module: str, processes: int | None, threads: int | None) -> list[str]:
    """Return the command line of a Dramatiq worker for ``module``; None keeps a default."""
    argv = [str(BIN_DIR / "dramatiq"), module]
    if processes is not None:
        argv += ["--processes", str(processes)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return argv


def run_checked(
    argv: Sequence[str], env: dict[str, str], timeout_s: float = 120
) -> str:
    """Run a short command from the repository root and return its output."""
    completed = subprocess.run(
        list(argv),
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with exit code {completed.returncode}:\n{completed.stderr}"
        )
    return completed.stdout


def seed_bts(config: Path, redis_url: str) -> None:
    """Start every configured chain with ``bts-sync start``."""
    run_checked([str(BIN_DIR / "bts-sync"), "start"], bts_env(config, redis_url))


def seed_naive(endpoint_list: Path, redis_url: str) -> None:
    """Send the first naive message of every endpoint in ``endpoint_list``."""
    run_checked(
        [sys.executable, "-m", "bench.naive_actors", str(endpoint_list)],
        naive_env(redis_url),
    )


class CpuMeter:
    """CPU seconds used by groups of processes between ``start`` and ``stop``.

    Processes are found anew at each reading as the descendants of the given
    root PIDs, so Dramatiq's worker processes are included.
    """

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots
        self.started: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall_s = 0.0
        self._t0 = 0.0

    def _read(self) -> dict[str, float]:
        return {
            label: cpu_seconds(p for root in roots for p in remember_descendants(root))
            for label, roots in self.roots.items()
        }

    def start(self) -> None:
        """Take the first reading."""
        self._t0 = time.monotonic()
        self.started = self._read()

    def stop(self) -> None:
        """Take the second reading and store the differences in ``used``."""
        self.wall_s = time.monotonic() - self._t0
        ended = self._read()
        self.used = {label: ended[label] - self.started[label] for label in ended}


class LatencyProbe:
    """A thread that times a GET of ``/probe`` every ``period_s`` seconds.

    The round-trip times show whether the HTTP server keeps up: a server that
    is the bottleneck responds to the probe late too.
    """

    def __init__(self, port: int, period_s: float = 0.2) -> None:
        self.port = port
        self.period_s = period_s
        self.rtts_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import http.client

        while not self._stop.wait(self.period_s):
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=2
                )
                connection.request("GET", "/probe")
                connection.getresponse().read()
                connection.close()
            except OSError:
                self.failures += 1
                continue
            self.rtts_ms.append((time.perf_counter() - started) * 1000)


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0 to 100) by linear interpolation; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Return the least-squares slope of ``ys`` over ``xs``; NaN for fewer than 2 points."""
    if len(xs) < 2:
        return math.nan
    mean_x = sum(xs) / len(xs)
    mean_y = sum(ys) / len(ys)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return numerator / denominator if denominator else math.nan


#: Milliseconds before a slot from which an arrival belongs to it. bts-sync's
#: launcher starts no request before its slot's due time, so an arrival that
#: is late by more than half an interval still belongs to the slot before it.
EARLY_TOLERANCE_MS = 500


def slot_of(arrived_ms: float, phase_ms: int, interval_ms: int) -> int:
    """Return the grid slot ``phase + k * interval`` that an arrival belongs to."""
    steps = math.floor((arrived_ms - phase_ms + EARLY_TOLERANCE_MS) / interval_ms)
    return phase_ms + steps * interval_ms


def ratio(value: float, baseline: float) -> str:
    """Format ``value / baseline`` as ``0.12x``, or ``n/a`` when undefined."""
    if not baseline or math.isnan(value) or math.isnan(baseline):
        return "n/a"
    return f"{value / baseline:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format rows as a Markdown table; floats get up to three decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return (
                "n/a" if math.isnan(value) else f"{value:.3f}".rstrip("0").rstrip(".")
            )
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> str:
    """Return the 1-minute load average of the machine, to show how busy it was."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def machine_line() -> str:
    """Describe the machine: CPU model, core count and Python version."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"1-minute load average {load_average()} at the end"
    )
