"""Commands that act on the chains in Redis: start, stop, status, show and run.

They import the broker module (``bts_sync.actors``) only when they run, after
pointing it at the configuration chosen on the command line, so that
``bts-sync once`` never loads Dramatiq or redis-py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from bts_sync.cli import EXIT_ENDPOINT_FAILED, load_context_settings, make_console
from bts_sync.config import Settings

if TYPE_CHECKING:
    from bts_sync.chain import ChainState


def import_actors(ctx: click.Context) -> ModuleType:
    """Import ``bts_sync.actors`` configured like this command, and check Redis.

    The configuration file and Redis URL chosen on the command line are passed
    through the environment, which is where the worker reads them too.

    Raises:
        RedisUnavailableError: Redis does not respond.
    """
    obj = ctx.find_root().obj or {}
    if obj.get("config_path"):
        os.environ["BTS_SYNC_CONFIG"] = str(obj["config_path"])
    if obj.get("redis_url"):
        os.environ["BTS_SYNC_REDIS_URL"] = obj["redis_url"]
    load_context_settings(ctx)

    from bts_sync import actors
    from bts_sync.connection import connect

    connect(actors.SETTINGS.redis_url)
    actors.broker.wait_for_redis_s = 0
    return actors


def _selected(settings: Settings, names: tuple[str, ...]) -> list[Any]:
    return (
        [settings.endpoint(name) for name in names]
        if names
        else list(settings.endpoints)
    )


@click.command()
@click.argument("names", nargs=-1)
@click.option(
    "--follow",
    is_flag=True,
    help="Show polls as they happen until Ctrl+C; the chains go on.",
)
@click.pass_context
def start(ctx: click.Context, names: tuple[str, ...], follow: bool) -> None:
    """Start the polling chain of each endpoint (all configured ones by default).

    Starting a chain that already runs changes nothing, so the command is safe
    to repeat. Workers (dramatiq bts_sync.actors) do the polling.
    """
    actors = import_actors(ctx)
    client = actors.redis_client()
    console = make_console()
    endpoints = _selected(actors.SETTINGS, names)
    for endpoint in endpoints:
        outcome = actors.start_chain(client, endpoint)
        if outcome.started:
            console.print(
                f"[green]started[/]  {endpoint.name}  every {endpoint.interval_s:g} s",
                highlight=False,
            )
        else:
            console.print(
                f"[dim]running[/]  {endpoint.name}  already running", highlight=False
            )

    if follow:
        follow_polls(client, actors.SETTINGS, [e.name for e in endpoints])


@click.command()
@click.argument("names", nargs=-1)
@click.pass_context
def stop(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Stop the polling chain of each endpoint (all configured ones by default).

    No poll starts after the command returns; a poll already under way finishes.
    A chain that still runs for an endpoint no longer in the configuration can
    be stopped by its name, and is stopped when no name is given.
    """
    actors = import_actors(ctx)
    from rich.text import Text

    from bts_sync import chain

    client = actors.redis_client()
    prefix = actors.SETTINGS.key_prefix
    configured = [e.name for e in actors.SETTINGS.endpoints]
    running = chain.running_names(client, prefix)
    orphans = [name for name in running if name not in configured]
    if names:
        targets = list(names)
        for name in names:
            if name not in configured and name not in running:
                actors.SETTINGS.endpoint(name)  # raises UnknownEndpointError
    else:
        targets = configured + orphans

    console = make_console()
    for name in targets:
        note = "  not in the configuration" if name not in configured else ""
        if chain.stop(client, prefix, name):
            console.print(Text.assemble(("stopped", "yellow"), f"  {name}{note}"))
        else:
            console.print(
                Text.assemble(("stopped", "dim"), f"  {name}  was not running")
            )


def collect_status(actors: ModuleType, client: Any) -> dict[str, Any]:
    """Gather each endpoint's chain state, counters and latest poll, plus queue depths."""
    from bts_sync import chain, store

    settings: Settings = actors.SETTINGS
    names = [e.name for e in settings.endpoints]
    states = chain.read_states(client, settings.key_prefix, names)
    stats = store.read_stats(client, settings.key_prefix, names)
    now_ms = int(time.time() * 1000)
    grace_ms = int(settings.watchdog_grace_s * 1000)

    rows = []
    for endpoint in settings.endpoints:
        state = states[endpoint.name]
        interval_ms = int(endpoint.interval_s * 1000)
        held_label, held_until_ms = _hold(state, now_ms)
        if not state.running:
            # A stopped chain keeps its pause for the next start, but shows none.
            held_until_ms = None
            label = "stopped"
        elif state.is_stalled(now_ms, grace_ms):
            label = "stalled"
        else:
            label = held_label or "running"
        next_due = None
        if state.running and state.slot_ms is not None:
            # Claimed slots run up to dispatch_lead ahead of now, so the next
            # poll is the next slot of the grid, not the last claimed one.
            next_slot_ms = chain.next_grid_slot(endpoint.name, now_ms + 1, interval_ms)
            if held_until_ms is not None and next_slot_ms < held_until_ms:
                next_slot_ms = chain.next_grid_slot(
                    endpoint.name, held_until_ms, interval_ms
                )
            next_due = next_slot_ms / 1000
        rows.append(
            {
                "name": endpoint.name,
                "state": label,
                "interval_s": endpoint.interval_s,
                "next_due_s": next_due,
                "held_until_s": held_until_ms / 1000 if held_until_ms else None,
                "paused_until_s": _seconds(state.paused_until_ms),
                "backoff_until_s": _seconds(state.backoff_until_ms),
                **stats[endpoint.name],
            }
        )
    return {
        "time": now_ms / 1000,
        "endpoints": rows,
        "queue": actors.queue_depths(client),
    }


def _hold(state: ChainState, now_ms: int) -> tuple[str | None, int | None]:
    """Return ``paused`` or ``backing off`` and its end, whichever ends later, or Nones."""
    paused = state.paused_until_ms or 0
    backoff = state.backoff_until_ms or 0
    if max(paused, backoff) <= now_ms:
        return None, None
    if paused >= backoff:
        return "paused", paused
    return "backing off", backoff


def _seconds(epoch_ms: int | None) -> float | None:
    return epoch_ms / 1000 if epoch_ms is not None else None


@click.command()
@click.option(
    "--json", "as_json", is_flag=True, help="Print the status as one JSON document."
)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the state of every endpoint: chain, last poll, failures and queue depths."""
    actors = import_actors(ctx)
    report = collect_status(actors, actors.redis_client())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return

    from bts_sync.render import queue_line, status_table

    console = make_console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # A pipe or file has no width; rich's 80 columns would cut the table.
        console.width = 200
    console.print(status_table(report["endpoints"], report["time"]))
    console.print(queue_line(report["queue"]))


@click.command()
@click.argument("name")
@click.option("--raw", is_flag=True, help="Print only the body, as stored.")
@click.pass_context
def show(ctx: click.Context, name: str, raw: bool) -> None:
    """Show the latest cached body of an endpoint and its metadata."""
    actors = import_actors(ctx)
    from bts_sync import store

    endpoint = actors.SETTINGS.endpoint(name)
    latest = store.read_latest(
        actors.redis_client(), actors.SETTINGS.key_prefix, endpoint.name
    )
    body: bytes = latest.get("body", b"")
    if raw:
        click.echo(body, nl=False)
        return
    if not latest:
        click.echo(f"Endpoint {name!r} has not been polled yet.", err=True)
        ctx.exit(EXIT_ENDPOINT_FAILED)

    from rich.text import Text

    from bts_sync.render import body_renderable, format_age

    console = make_console()
    now = time.time()
    for label, field_name in (
        ("fetched", "fetched_at"),
        ("changed", "changed_at"),
        ("last poll", "time"),
    ):
        if latest.get(field_name):
            console.print(
                Text.assemble(
                    (f"{label:<10}", "bold"),
                    format_age(now - float(latest[field_name])),
                )
            )
    for label, field_name in (
        ("status", "status"),
        ("error", "error"),
        ("hash", "hash"),
        ("type", "content_type"),
    ):
        if latest.get(field_name):
            console.print(
                Text.assemble((f"{label:<10}", "bold"), str(latest[field_name]))
            )
    if body:
        is_json = latest.get("is_json") == "1"
        text = body.decode(errors="replace")
        console.print()
        console.print(
            body_renderable(json.loads(text) if is_json else text, is_json, None)
        )


def follow_polls(client: Any, settings: Settings, names: list[str]) -> None:
    """Print each new poll of the named endpoints until Ctrl+C."""
    from rich.text import Text

    from bts_sync import store
    from bts_sync.render import status_style

    console = make_console()
    console.print(
        "[dim]Following polls; Ctrl+C stops following, the chains go on.[/]",
        highlight=False,
    )
    cursors = {store.history_key(settings.key_prefix, name): "$" for name in names}
    try:
        while True:
            replies = client.xread(cursors, block=1000, count=100)
            for key, entries in replies or []:
                name = key.decode().rsplit(":", 1)[-1]
                for entry_id, raw_fields in entries:
                    cursors[key.decode()] = entry_id.decode()
                    fields = {
                        k.decode(): v.decode(errors="replace")
                        for k, v in raw_fields.items()
                    }
                    ok = fields.get("ok") == "1"
                    status_text = fields.get("status") or fields.get("error_kind", "")
                    line = Text.assemble(
                        time.strftime(
                            "%H:%M:%S ", time.localtime(float(fields.get("time", "0")))
                        ),
                        (f"{name:<20}", "bold"),
                        (
                            f"{status_text:<6}",
                            status_style(
                                int(fields["status"]) if fields.get("status") else None,
                                ok,
                            ),
                        ),
                        f" {float(fields.get('elapsed_ms', 0)):6.0f} ms  late {float(fields.get('lateness_ms', 0)):5.0f} ms",
                        ("  changed" if fields.get("changed") == "1" else "", "cyan"),
                        (
                            f"  {fields.get('error_kind')}: {fields.get('error')}"
                            if not ok
                            else "",
                            "red",
                        ),
                    )
                    console.print(line)
    except KeyboardInterrupt:
        console.print("[dim]Stopped following; the chains go on.[/]", highlight=False)


@click.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run a worker, the scheduler and a live view in the foreground, for development.

    It starts every configured chain. When no Redis responds and none was
    configured, it starts a private redis-server with its data in the state
    folder (.bts-sync, or BTS_SYNC_STATE_DIR). Ctrl+C, SIGTERM or SIGHUP stops
    the processes it started; the chains stay in Redis and resume on the next
    run.
    """
    from bts_sync import devrun
    from bts_sync.config import DEFAULT_REDIS_URL
    from bts_sync.connection import connect
    from bts_sync.errors import RedisUnavailableError

    settings = load_context_settings(ctx)
    obj = ctx.find_root().obj or {}
    console = make_console()
    folder = devrun.state_dir(os.environ)
    children: list[devrun.Child] = []
    # The children run in their own sessions, so a SIGTERM or SIGHUP that
    # ended this process at once would leave them running. Both are handled
    # like Ctrl+C instead.
    previous_handlers = {
        signum: signal.signal(signum, _raise_keyboard_interrupt)
        for signum in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        try:
            connect(settings.redis_url).close()
        except RedisUnavailableError:
            if devrun.redis_was_chosen(
                os.environ,
                obj.get("redis_url"),
                settings.redis_url != DEFAULT_REDIS_URL,
            ):
                raise
            url, redis_child = devrun.start_private_redis(folder)
            children.append(redis_child)
            os.environ["BTS_SYNC_REDIS_URL"] = url
            obj["redis_url"] = url
            console.print(
                devrun.describe_private_redis(url, folder, redis_child.process.pid),
                highlight=False,
            )

        actors = import_actors(ctx)
        env = dict(os.environ)
        workers = [
            devrun.spawn(name, command, folder, env)
            for name, command in devrun.worker_commands().items()
        ]
        children.extend(workers)
        console.print(
            f"Worker and scheduler started; their logs go to {folder}/worker.log and {folder}/scheduler.log.",
            highlight=False,
        )

        client = actors.redis_client()
        for endpoint in actors.SETTINGS.endpoints:
            actors.start_chain(client, endpoint)

        _show_live_view(actors, client, console, workers)
    except KeyboardInterrupt:
        console.print("Stopping the worker and scheduler …", highlight=False)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        redis_children = [c for c in children if c.name == "redis"]
        devrun.stop_children([c for c in children if c.name != "redis"])
        devrun.stop_children(redis_children)


def _show_live_view(
    actors: ModuleType, client: Any, console: Any, workers: list[Any]
) -> None:
    """Redraw the watch view every second until Ctrl+C or until a child exits.

    Raises:
        click.ClickException: The worker or the scheduler exited.
    """
    from rich.live import Live

    from bts_sync.overview import HistoryCache, build_overview
    from bts_sync.watch import watch_view

    settings: Settings = actors.SETTINGS
    cache = HistoryCache(settings.key_prefix, settings.history_length)
    hint = "Ctrl+C stops the worker and scheduler; the chains resume on the next run."
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            overview = build_overview(actors, client, cache)
            live.update(watch_view(overview, hint=hint))
            for child in workers:
                if child.process.poll() is not None:
                    raise click.ClickException(
                        f"The {child.name} exited with code {child.process.returncode}; see {child.log_path}."
                    )
            time.sleep(1)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
