"""The ``bts-sync`` command line.

Exit codes:

* 0: success.
* 1: the endpoint failed (``once``), or an endpoint named on the command line
  could not be started or stopped.
* 2: usage or configuration error.
* 3: Redis did not respond, rejected the credentials or returned an error.
* 130: interrupted with Ctrl+C.

Dramatiq and redis-py are imported inside the commands that need them, so
``bts-sync once`` starts without loading either.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NoReturn

import click

from bts_sync import __version__
from bts_sync.errors import (
    BtsSyncError,
    ConfigError,
    RedisUnavailableError,
    UnknownEndpointError,
)
from bts_sync.logs import LOG_FORMATS, configure_logging

logger = logging.getLogger(__name__)

#: The endpoint failed.
EXIT_ENDPOINT_FAILED = 1
#: Usage or configuration error.
EXIT_USAGE = 2
#: Redis did not respond at the configured URL.
EXIT_REDIS = 3
#: Interrupted by Ctrl+C.
EXIT_INTERRUPTED = 130

_EPILOG = """\b
Examples:
  # Poll the configured endpoint once and show the response
  bts-sync once
  # Poll any URL once and print the result as JSON
  bts-sync once --url http://127.0.0.1:8080/items --json
  # Show the resolved configuration, secrets masked
  bts-sync config
  # Start every configured chain and watch the polls
  bts-sync start --follow

\b
Exit codes: 0 success, 1 endpoint failed, 2 usage or configuration error,
3 Redis unreachable, 130 interrupted.
"""


class CliError(click.ClickException):
    """A failure reported to the user as one ``Error: …`` line with an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


#: Commands defined in other modules, by name: (module, attribute). They are
#: imported when named or listed, so ``bts-sync once`` does not load them.
_LAZY_COMMANDS = {
    "start": ("bts_sync.commands", "start"),
    "stop": ("bts_sync.commands", "stop"),
    "status": ("bts_sync.commands", "status"),
    "show": ("bts_sync.commands", "show"),
    "run": ("bts_sync.commands", "run"),
    "watch": ("bts_sync.monitor_commands", "watch"),
    "dashboard": ("bts_sync.monitor_commands", "dashboard"),
}


class _Group(click.Group):
    """Click group that turns bts-sync errors into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module_name, attribute = _LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, UnknownEndpointError) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        except RedisUnavailableError as exc:
            raise CliError(str(exc), EXIT_REDIS) from None
        except BtsSyncError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            logger.debug("Unexpected error.", exc_info=True)
            raise CliError(
                f"Unexpected {type(exc).__name__}: {exc}. Run with --log-level debug to see where it happened.",
                EXIT_USAGE,
            ) from None


@click.group(
    cls=_Group,
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="BTS_SYNC_CONFIG",
    show_envvar=True,
    help="TOML configuration file; defaults to ./bts-sync.toml when it exists.",
)
@click.option(
    "--redis-url",
    envvar="BTS_SYNC_REDIS_URL",
    show_envvar=True,
    help="Redis URL; REDIS_URL is read too.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="auto",
    envvar="BTS_SYNC_LOG_FORMAT",
    show_envvar=True,
    help="Log format: rich on a terminal and plain otherwise with auto.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    envvar="BTS_SYNC_LOG_LEVEL",
    show_envvar=True,
    help="Lowest level of log messages shown.",
)
@click.version_option(__version__, "--version", prog_name="bts-sync")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    redis_url: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Poll HTTP JSON APIs on a fixed cadence and keep the latest response in Redis."""
    configure_logging(log_format, log_level.upper())
    ctx.obj = {
        "config_path": config_path,
        "redis_url": redis_url,
        "log_format": log_format,
        "log_level": log_level,
    }


def load_context_settings(ctx: click.Context) -> Any:
    """Load the settings named by the group's options."""
    from bts_sync.config import load_settings

    obj = ctx.find_root().obj or {}
    return load_settings(obj.get("config_path"), redis_url=obj.get("redis_url"))


def stdout_is_terminal() -> bool:
    """Tell whether standard output is a terminal, or FORCE_COLOR requests rich output anyway."""
    return sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR"))


def make_console(stderr: bool = False) -> Any:
    """Create the rich console used for output; colors follow the terminal and NO_COLOR."""
    from rich.console import Console

    # rich honours NO_COLOR by dropping colours only, so bold and dim still
    # reach the terminal as escape codes. With no colour system, nothing does.
    no_color = bool(os.environ.get("NO_COLOR"))
    return Console(
        stderr=stderr,
        highlight=False,
        soft_wrap=False,
        color_system=None if no_color else "auto",
    )


@cli.command()
@click.argument("name", required=False)
@click.option(
    "--url", help="Poll this URL; with NAME, the endpoint's other settings are kept."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the whole result as one JSON document.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the response headers too.")
@click.option("--full", is_flag=True, help="Print long bodies in full on a terminal.")
@click.pass_context
def once(
    ctx: click.Context,
    name: str | None,
    url: str | None,
    as_json: bool,
    verbose: bool,
    full: bool,
) -> None:
    """Poll one endpoint in the foreground and show the response.

    NAME picks a configured endpoint; without it, the only or first endpoint is
    polled. Redis is not needed. Exits with 1 when the endpoint fails.
    """
    from bts_sync.config import ad_hoc_endpoint
    from bts_sync.fetch import dump_json, fetch
    from bts_sync.render import plain_result, print_result

    if url is not None and name is None:
        endpoint = ad_hoc_endpoint(url)
    else:
        settings = load_context_settings(ctx)
        endpoint = settings.endpoint(name) if name else settings.endpoints[0]
        if url is not None:
            endpoint = ad_hoc_endpoint(url, base=endpoint)

    result = fetch(endpoint)
    if as_json:
        click.echo(dump_json(result.to_dict()))
    elif stdout_is_terminal():
        print_result(make_console(), result, verbose=verbose, full=full)
    else:
        click.echo(plain_result(result, verbose=verbose), nl=False)
    ctx.exit(0 if result.ok else EXIT_ENDPOINT_FAILED)


@cli.command("config")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the configuration as JSON."
)
@click.pass_context
def show_config(ctx: click.Context, as_json: bool) -> None:
    """Print the resolved configuration with secrets masked."""
    settings = load_context_settings(ctx)
    data = settings.to_public_dict()
    if as_json or not stdout_is_terminal():
        click.echo(json.dumps(data, indent=2))
        return

    # The same JSON document, highlighted for a person.
    make_console().print_json(data=data)


def main() -> NoReturn:
    """Run the command line; the console script ``bts-sync`` calls this."""
    cli.main(prog_name="bts-sync")
    sys.exit(0)  # pragma: no cover - click exits itself
