"""bts-sync: poll HTTP JSON APIs on a fixed cadence and keep the latest response in Redis."""

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bts-sync")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
