"""Exceptions raised by bts-sync.

The tree::

    BtsSyncError
    ├── ConfigError         a configuration file, variable or flag is invalid
    ├── RedisUnavailableError  Redis did not respond at the configured URL
    └── UnknownEndpointError   a command named an endpoint that is not configured

Endpoint failures (timeouts, bad statuses, invalid JSON) are not exceptions: the
fetch returns them as a result, so that a poll always records something.
"""


class BtsSyncError(Exception):
    """Base class of every error that bts-sync raises on purpose."""


class ConfigError(BtsSyncError):
    """The configuration is invalid; the message names the key, value and fix."""


class RedisUnavailableError(BtsSyncError):
    """Redis did not respond at the configured URL."""


class UnknownEndpointError(BtsSyncError):
    """A command named an endpoint that the configuration does not define."""
