"""The ``watch`` and ``dashboard`` commands.

This module imports only click, so that registering the commands costs
``bts-sync once`` nothing; rich, Flask and Redis are imported when a command
runs.
"""

from __future__ import annotations

import os
import secrets
import time

import click

from bts_sync.cli import EXIT_USAGE, CliError

#: Environment variable that contains the dashboard token.
TOKEN_VARIABLE = "BTS_SYNC_DASHBOARD_TOKEN"


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    help="Seconds between two refreshes.",
)
@click.pass_context
def watch(ctx: click.Context, interval: float) -> None:
    """Show every endpoint's state, latency, success rate and errors live, until Ctrl+C.

    Below the endpoints it shows the queue depths and the worker processes seen
    in the last minute.
    """
    import redis
    from rich.live import Live

    from bts_sync.cli import make_console
    from bts_sync.commands import import_actors
    from bts_sync.connection import describe
    from bts_sync.overview import HistoryCache, build_overview
    from bts_sync.redact import mask_url
    from bts_sync.watch import watch_view

    actors = import_actors(ctx)
    settings = actors.SETTINGS
    client = actors.redis_client()
    cache = HistoryCache(settings.key_prefix, settings.history_length)
    overview = build_overview(actors, client, cache)
    try:
        with Live(console=make_console(), auto_refresh=False) as live:
            while True:
                started = time.monotonic()
                problem = ""
                try:
                    overview = build_overview(actors, client, cache)
                except redis.RedisError as exc:
                    problem = (
                        f"Redis did not answer at {mask_url(settings.redis_url)} "
                        f"({describe(exc)}); showing the last data and retrying."
                    )
                live.update(watch_view(overview, problem), refresh=True)
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    help=f"Address to listen on; any address other than loopback needs {TOKEN_VARIABLE}.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, help="TCP port.")
@click.option(
    "--threads", type=click.IntRange(1, 64), default=8, help="Request threads."
)
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, threads: int) -> None:
    """Serve the web dashboard, its JSON API and Prometheus metrics on /metrics.

    The page shows every endpoint's health, charts of latency and lateness,
    recent failures, queue depths and workers, and has buttons to start and
    stop endpoints and to requeue or delete dead-lettered messages. Actions
    need the token in BTS_SYNC_DASHBOARD_TOKEN; on loopback without it, a
    random token is made and printed.
    """
    from bts_sync.dashboard import (
        MIN_TOKEN_LENGTH,
        Access,
        Monitor,
        bind,
        create_app,
        is_loopback,
    )

    token = os.environ.get(TOKEN_VARIABLE, "")
    loopback = is_loopback(host)
    if not token and not loopback:
        raise CliError(
            f"The dashboard would listen on {host}, which is not a loopback address, "
            f"so it needs a token: set {TOKEN_VARIABLE} to a random value of at least "
            f"{MIN_TOKEN_LENGTH} characters, or listen on 127.0.0.1.",
            EXIT_USAGE,
        )
    if token and len(token) < MIN_TOKEN_LENGTH:
        raise CliError(
            f"{TOKEN_VARIABLE} is {len(token)} characters long; use at least "
            f"{MIN_TOKEN_LENGTH}, for example the output of: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            EXIT_USAGE,
        )
    generated = not token
    if generated:
        token = secrets.token_urlsafe(24)

    from bts_sync.commands import import_actors

    actors = import_actors(ctx)
    app = create_app(Monitor(actors), Access(token=token, open_reads=loopback))
    try:
        server = bind(app, host, port, threads=threads)
    except OSError as exc:
        raise CliError(
            f"Could not listen on {host}:{port}: {exc.strerror}. Choose another --port.",
            EXIT_USAGE,
        ) from None
    shown_host = f"[{host}]" if ":" in host else host
    base = f"http://{shown_host}:{port}"
    click.echo(f"Dashboard on {base}/ (metrics on {base}/metrics); Ctrl+C stops it.")
    if generated:
        click.echo(
            f"Actions need a token; {TOKEN_VARIABLE} is not set, so this run made one. "
            f"Sign in at {base}/login?token={token}"
        )
    else:
        click.echo(f"Actions need the token in {TOKEN_VARIABLE}.")
    try:
        server.run()
    except KeyboardInterrupt:
        return
