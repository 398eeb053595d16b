"""bts-sync: poll HTTP JSON APIs on a fixed cadence and keep the latest response in Redis."""

import logging

# The version is written here, not read from the installed metadata, because
# importlib.metadata adds about 15 ms to the start of every command.
# pyproject.toml reads it from this line.
__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
