"""Shared helpers: run the CLI in-process and small, fast recipes on generated data."""

from __future__ import annotations

import json

import pytest

from sslcli.cli import main

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "--set", "data.synthetic_train=96", "--set", "data.synthetic_val=40", "--set", "data.image_size=32",
    "--set", "backbone.small_input=false", "--batch-size", "32",
]


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys):
    """Run `sslcli ARGS...` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
