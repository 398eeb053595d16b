"""Run the command line interface as ``python -m bts_sync``."""

from bts_sync.cli import main

main()
