"""The `sslcli` command line, built on the Python API (`sslcli.api`). Commands are thin: they
parse options, call the API and print; the heavy modules (torch, timm) are imported only when a
command runs, so `sslcli --help` answers at once."""

from __future__ import annotations

import sys
from typing import List, Optional

# each module registers its commands on the app, in the order `sslcli --help` lists them
from . import train  # noqa: F401
from . import evaluate  # noqa: F401
from . import tools  # noqa: F401
from ._app import app

__all__ = ["app", "main"]


def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI (exits with the command's code)."""
    from ..launch import run_app

    sys.exit(run_app(app, sys.argv[1:] if argv is None else list(argv)))
