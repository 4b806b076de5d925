"""How a command line is run: the one spelling typer cannot parse, usage errors as one `error:`
line with exit code 2 like any other bad input, and the exit code."""

from __future__ import annotations

import sys

import typer

from .output import quiet


def run_app(app: typer.Typer, args: list[str]) -> int:
    """Run `app` on `args` and return its exit code; nothing here imports torch."""
    try:  # recent typer runs on its own copy of click
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    for i, arg in enumerate(args):  # `--resume auto`: typer has no option whose value may be left out
        if arg == "--resume=auto" or (arg == "--resume" and args[i + 1:i + 2] == ["auto"]):
            args[i:i + (1 if "=" in arg else 2)] = ["--resume-auto"]
            break
    try:
        code = app(args=args, prog_name="sslcli", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # the help was printed as the exception was made
        code = exc.exit_code
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "sslcli"
        message = " ".join(exc.format_message().split()).rstrip(".")
        _say(f"error: {where}: {message}; see `{where} -h`")
        code = exc.exit_code
    except click.ClickException as exc:
        _say(f"error: {' '.join(exc.format_message().split()).rstrip('.')}")
        code = exc.exit_code
    except typer.Abort:
        _say("interrupted")
        code = 130
    return code if isinstance(code, int) else 0


def _say(line: str) -> None:
    if not quiet():  # under torchrun, rank 0 speaks for every rank
        print(line, file=sys.stderr)
