"""The typer app every command registers on, the decorator that turns errors into the CLI's
contract, and the help texts the commands share."""

from __future__ import annotations

import errno
import functools
import sys

import typer

from ..errors import UserError
from ..output import quiet

app = typer.Typer(
    name="sslcli",
    help="Self-supervised visual representation learning: pretrain any timm backbone with a "
    "pretext task or a joint-embedding method, then judge it with kNN.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

JSON_HELP = "Print exactly one JSON object on stdout; progress and tables go to stderr."
DATA_HELP = ("synthetic:shapes, synthetic:moving-shapes, an image or video folder (train/ and val/ of class folders, "
             "class folders, or flat), cifar10, cifar100, stl10.")
MODEL_HELP = "A run folder from `sslcli pretrain`, a backbone.safetensors file, or random:TIMM_NAME (the random-init floor)."


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"sslcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


_PATH_ERRORS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EISDIR}


def command(*args, **kwargs):
    """`app.command` whose errors follow the contract: bad input is one line on stderr and exit
    code 2 (1 when the run itself failed), an interrupt exits 130."""

    def register(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except UserError as exc:
                if _state["debug"]:
                    raise
                if not quiet():  # under torchrun, rank 0 speaks for every rank
                    print(f"error: {exc}", file=sys.stderr)
                raise typer.Exit(getattr(exc, "exit_code", 2)) from None
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                raise typer.Exit(130) from None
            except OSError as exc:  # a path the checks let through: too long, a loop of links
                if _state["debug"] or exc.errno not in _PATH_ERRORS:
                    raise
                name = str(exc.filename or "")
                shown = name if len(name) <= 80 else name[:60] + "..." + name[-17:]
                print(f"error: the path '{shown}' cannot be used ({exc.strerror}); give another", file=sys.stderr)
                raise typer.Exit(2) from None
            except Exception as exc:
                from ..engine import Interrupted

                if not isinstance(exc, Interrupted):
                    raise
                if not quiet():
                    print(str(exc), file=sys.stderr)
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(run)

    return register


DEVICE_HELP = "auto, cpu or cuda."
FRAMES_HELP = "Clips: evenly spaced frames whose features are averaged. Default: the run's data.eval_frames, else 8."
DATA_ROOT_HELP = "Folder holding the torchvision set named by --data (cifar10, cifar100, stl10). Default: the run's data.root."
TOWER_HELP = "vision (the backbone), or audio: an audio-visual run's audio tower, hearing each clip's sound."
EVAL_DATA_HELP = DATA_HELP + " Default: the run's own data, else synthetic:shapes (stderr says which)."
