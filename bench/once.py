"""Time ``bts-sync once --url URL`` against ``curl -s`` and HTTPie's ``http``.

The script starts the DummyJSON stand-in from ``tests/dummyjson_server.py`` on
127.0.0.1 (rate limit off) and requests one of its paths with each tool. Every
round runs each tool once, in an order that rotates from round to round, and
times the whole process with ``time.perf_counter`` around ``subprocess.run``.
Output goes to /dev/null, or with ``--terminal`` to a pseudo-terminal, where
bts-sync and HTTPie colour their output. The server is stopped by its PID at
the end.

HTTPie is skipped when ``http`` is neither beside this Python nor on the PATH.
``--baseline`` times a second bts-sync executable in the same rounds, such as
an install of an older commit. The run stops after ``--runs`` rounds or
``--max-seconds``, whichever comes first.

Usage::

    python bench/once.py --runs 40 --write docs/benchmarks.md
    python bench/once.py --runs 40 --terminal --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import pty
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO / "tests" / "dummyjson_server.py"

#: Largest median wall time of ``bts-sync once`` that meets the target, in ms.
TARGET_MEDIAN_MS = 150.0

#: Largest share of HTTPie's median that meets the target.
TARGET_SHARE_OF_HTTPIE = 0.5


@dataclass
class Tool:
    """One command line under test and the wall times measured for it."""

    name: str
    argv: list[str]
    times_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        """Median of the measured wall times, in milliseconds."""
        return statistics.median(self.times_ms)


def find_executable(name: str) -> str | None:
    """Find ``name`` beside the running Python first, then on the PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def start_server() -> tuple[subprocess.Popen[str], str]:
    """Start the stand-in API and return the process and its base URL."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--rate-limit", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip()
    if not base_url.startswith("http://127.0.0.1:"):
        process.terminate()
        process.wait(timeout=10)
        raise SystemExit(f"The stand-in API did not start; it printed {base_url!r}.")
    return process, base_url


def child_environment() -> dict[str, str]:
    """Return the environment of the timed commands.

    PYTHONDONTWRITEBYTECODE is removed: ``pip install .`` ships compiled
    bytecode, but an editable install with that variable set would compile
    every bts_sync module again on each run. NO_COLOR and FORCE_COLOR are
    removed so that only the output decides what the tools print.
    """
    removed = {"PYTHONDONTWRITEBYTECODE", "NO_COLOR", "FORCE_COLOR"}
    environment = {k: v for k, v in os.environ.items() if k not in removed}
    environment["TERM"] = "xterm-256color"
    return environment


ENVIRONMENT = child_environment()


def run_to_devnull(argv: list[str]) -> int:
    """Run ``argv`` with its output discarded; return the exit status."""
    completed = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENVIRONMENT,
        check=False,
    )
    return completed.returncode


def run_in_terminal(argv: list[str]) -> int:
    """Run ``argv`` with a pseudo-terminal as its output, read to the end; return the exit status."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env=ENVIRONMENT,
    )
    os.close(terminal)
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
    finally:
        os.close(controller)
    return process.wait(timeout=60)


def run_once(tool: Tool, terminal: bool) -> float:
    """Run the tool once and return its wall time in milliseconds."""
    started = time.perf_counter()
    status = run_in_terminal(tool.argv) if terminal else run_to_devnull(tool.argv)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if status != 0:
        raise SystemExit(
            f"{' '.join(tool.argv)} exited with {status}; run it by hand to see why."
        )
    return elapsed_ms


def measure(
    tools: list[Tool], runs: int, warmup: int, max_seconds: float, terminal: bool
) -> int:
    """Run the alternating rounds; return how many timed rounds completed."""
    for _ in range(warmup):
        for tool in tools:
            run_once(tool, terminal)

    stop_at = time.monotonic() + max_seconds
    completed = 0
    for round_index in range(runs):
        if time.monotonic() > stop_at:
            break
        shift = round_index % len(tools)
        for tool in tools[shift:] + tools[:shift]:
            tool.times_ms.append(run_once(tool, terminal))
        completed += 1
    return completed


def section_heading(terminal: bool) -> str:
    """Return the heading of the section that a run in this mode writes."""
    output = "a terminal" if terminal else "/dev/null"
    return f"## `bts-sync once`, output to {output}"


def report(
    tools: list[Tool], command: str, url_path: str, rounds: int, terminal: bool
) -> str:
    """Format the results as a Markdown section of docs/benchmarks.md."""
    bts_sync = tools[0]
    output = "a pseudo-terminal, read to the end" if terminal else "/dev/null"
    lines = [
        section_heading(terminal),
        "",
        f"Command: `{command}`",
        "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {os.cpu_count()} cores, shared with other jobs and noisy; "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- Request: `GET {url_path}` on the DummyJSON stand-in "
        "(`tests/dummyjson_server.py`) on 127.0.0.1",
        f"- Method: {rounds} rounds after warm-up. Each round runs every tool "
        "once, in an order that rotates from round to round, timed with "
        "`time.perf_counter` around the process. Output to "
        f"{output}. PYTHONDONTWRITEBYTECODE is unset, so bytecode is cached "
        "as after `pip install .`.",
        "",
        "| tool | command | median ms | min ms | max ms | median / bts-sync |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for tool in tools:
        command_text = " ".join([Path(tool.argv[0]).name, *tool.argv[1:]])
        lines.append(
            f"| {tool.name} | `{command_text}` | {tool.median_ms:.1f} | "
            f"{min(tool.times_ms):.1f} | {max(tool.times_ms):.1f} | "
            f"{tool.median_ms / bts_sync.median_ms:.2f} |"
        )

    lines += ["", *target_lines(tools)]
    return "\n".join(lines) + "\n"


def target_lines(tools: list[Tool]) -> list[str]:
    """State whether ``bts-sync once`` meets its two targets."""
    bts_sync = tools[0]
    verdict = "met" if bts_sync.median_ms <= TARGET_MEDIAN_MS else "missed"
    lines = [
        f"Target median of at most {TARGET_MEDIAN_MS:.0f} ms: {verdict} "
        f"({bts_sync.median_ms:.1f} ms)."
    ]
    httpie = next((tool for tool in tools if tool.name == "HTTPie"), None)
    if httpie is None:
        lines.append("HTTPie was not installed, so the second target was not measured.")
    else:
        share = bts_sync.median_ms / httpie.median_ms
        verdict = "met" if share <= TARGET_SHARE_OF_HTTPIE else "missed"
        lines.append(
            f"Target of at most {TARGET_SHARE_OF_HTTPIE:.0%} of HTTPie's median: "
            f"{verdict} ({share:.0%})."
        )
    return lines


def write_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section under ``heading`` in ``doc``, or append it; keep the rest."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    start = text.find(heading)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        rest = "" if end == -1 else text[end + 1 :]
        text = text[:start] + section + ("\n" + rest if rest else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def main() -> None:
    """Parse the options, run the benchmark and print or write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--max-seconds", type=float, default=300, help="stop after this many seconds"
    )
    parser.add_argument("--path", default="/test", help="path requested on the server")
    parser.add_argument(
        "--terminal", action="store_true", help="send output to a pseudo-terminal"
    )
    parser.add_argument(
        "--baseline", help="another bts-sync executable to time in the same rounds"
    )
    parser.add_argument("--write", type=Path, help="Markdown file to update")
    args = parser.parse_args()

    bts_sync = find_executable("bts-sync")
    curl = shutil.which("curl")
    if bts_sync is None or curl is None:
        raise SystemExit("bts-sync and curl must be installed; pip install . first.")
    httpie = find_executable("http")

    server, base_url = start_server()
    try:
        url = base_url + args.path
        tools = [Tool("bts-sync", [bts_sync, "once", "--url", url])]
        if args.baseline:
            tools.append(
                Tool("bts-sync baseline", [args.baseline, "once", "--url", url])
            )
        tools.append(Tool("curl", [curl, "-s", url]))
        if httpie is not None:
            tools.append(Tool("HTTPie", [httpie, "--ignore-stdin", url]))
        rounds = measure(tools, args.runs, args.warmup, args.max_seconds, args.terminal)
    finally:
        server.terminate()
        server.wait(timeout=10)

    command = " ".join(["python bench/once.py", *sys.argv[1:]])
    section = report(tools, command, args.path, rounds, args.terminal)
    print(section)
    if args.write is not None:
        write_section(args.write, section_heading(args.terminal), section)


if __name__ == "__main__":
    main()
