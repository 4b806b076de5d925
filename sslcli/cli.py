"""The `sslcli` command line. Commands are thin: they parse options, then import the heavy
modules (torch, timm) only when they run, so `sslcli --help` answers at once."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer

from .errors import UserError

app = typer.Typer(
    name="sslcli",
    help="Self-supervised visual representation learning: pretrain any timm backbone with a "
    "pretext task or a joint-embedding method, then judge it with kNN.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}

JSON_HELP = "Print exactly one JSON object on stdout; progress and tables go to stderr."
DATA_HELP = "synthetic:shapes, an image folder (train/ and val/ of class folders, class folders, or flat), cifar10, cifar100, stl10."
MODEL_HELP = "A run folder from `sslcli pretrain`, a backbone.safetensors file, or random:TIMM_NAME (the random-init floor)."


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    _state["debug"] = debug
    if version:
        from . import __version__

        typer.echo(f"sslcli {__version__}")
        raise typer.Exit()


# ---------------------------------------------------------------- pretrain

def _load_raw_recipe(method: Optional[str], recipe: Optional[str], out: Optional[Path], resume: bool) -> dict:
    from .recipe import RECIPES_DIR, find_recipe, read_yaml

    if recipe:
        raw = read_yaml(find_recipe(recipe))
    elif method:
        bundled = RECIPES_DIR / f"{method}.yaml"
        if bundled.is_file():
            raw = read_yaml(bundled)
        else:
            from .registry import get_method

            get_method(method)  # unknown names fail here with a did-you-mean
            raw = {"method": {"name": method}}
    elif resume and out is not None and (out / "recipe.yaml").is_file():
        raw = read_yaml(out / "recipe.yaml")
    else:
        raise UserError("say what to train: --method NAME (see `sslcli methods`) or --recipe FILE|NAME (see `sslcli recipes`)")
    raw.setdefault("method", {})
    if not isinstance(raw["method"], dict):
        raise UserError("recipe section 'method' must be a mapping with at least 'name'")
    if method:
        named = raw["method"].get("name")
        if recipe and named and named != method:
            raise UserError(f"--method {method} contradicts the recipe's method '{named}'; drop one of them")
        raw["method"]["name"] = method
    return raw


def _prepare_out(out: Path, resume: bool, force: bool) -> None:
    """Refuse to mix runs: a non-empty folder needs --resume or --force."""
    import shutil

    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder path")
    busy = out.is_dir() and any(out.iterdir())
    if resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise UserError(f"--resume: no checkpoint at '{out / 'checkpoints' / 'last.pt'}'; run without --resume to start")
        return
    if busy and not force:
        raise UserError(f"--out '{out}' is not empty; pass --resume to continue that run or --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".sslcli-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out '{out}' is not writable ({exc.strerror}); choose another folder") from None
    if busy and force:
        for name in ("checkpoints", "metrics.jsonl", "recipe.yaml", "backbone.safetensors", "backbone.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


@app.command()
def pretrain(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method plugin; alone it uses the bundled recipe of that name."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="A recipe YAML file or a bundled recipe name."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " (data.source)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/METHOD-TIMESTAMP)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Any timm model name (backbone.name)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (train.epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (train.batch_size)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override any recipe key: --set optim.lr=0.1 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace the run in a non-empty --out."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (train.device)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Pretrain a backbone with a self-supervised method and write a run folder.

    [dim]Example: sslcli pretrain --method simclr --out runs/a[/dim]
    """
    from .recipe import apply_overrides, parse_set, resolve_recipe

    overrides = [parse_set(item) for item in set_]
    if resume and force:
        raise UserError("--resume and --force contradict each other; pass one of them")
    raw = _load_raw_recipe(method, recipe, out, resume)
    shortcuts = {("data", "source"): data, ("backbone", "name"): backbone, ("train", "epochs"): epochs,
                 ("train", "batch_size"): batch_size, ("train", "device"): device}
    overrides += [(list(key), value) for key, value in shortcuts.items() if value is not None]
    raw = apply_overrides(raw, overrides)

    from .registry import get_method

    resolved = resolve_recipe(raw, lambda name: get_method(name).Config)
    if out is None:
        if resume:
            raise UserError("--resume needs --out, the run folder to continue")
        out = Path("runs") / f"{resolved.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _prepare_out(out, resume, force)

    from .engine import Trainer

    console = _stderr()
    console.print(f"pretraining [bold]{resolved.method.name}[/bold] on {resolved.data.source} -> {out}")
    result = Trainer(resolved, out, console).run(resume=resume)
    if not as_json:
        console.print(f"done in {result['seconds']:.0f} s; backbone: {result['backbone']}")
    _emit(result, as_json)


# ---------------------------------------------------------------- knn

@app.command()
def knn(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str = typer.Option("synthetic:shapes", "--data", "-d", help=DATA_HELP),
    k: int = typer.Option(20, "--k", min=1, help="Neighbours that vote."),
    temperature: float = typer.Option(0.07, "--temperature", "-t", min=1e-6, help="Vote weight exp(similarity / T)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per feature-extraction batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Weighted kNN accuracy of a backbone's features, from the train split to the val split.

    [dim]Example: sslcli knn runs/a --data synthetic:shapes --json[/dim]
    """
    from .evaluation.run import run_knn

    result = run_knn(model, data, k=k, temperature=temperature, batch_size=batch_size, device=device)
    if not as_json:
        from rich.table import Table

        table = Table(title=f"kNN  {model} on {data}")
        for col in ("top-1", "top-5", "k", "T", "train", "val"):
            table.add_column(col, justify="right")
        table.add_row(f"{result['top1']:.4f}", f"{result['top5']:.4f}", str(k), f"{temperature:g}",
                      str(result["n_train"]), str(result["n_val"]))
        _stderr().print(table)
    _emit(result, as_json)


# ---------------------------------------------------------------- listings

def _listing(title: str, columns: dict[str, str], rows: list[dict], key: str, as_json: bool) -> None:
    """Print `rows` as one JSON object under `key`, or as a table of `columns` (field -> heading)."""
    if as_json:
        _emit({key: rows}, True)
        return
    from rich.table import Table

    table = Table(title=title)
    for heading in columns.values():
        table.add_column(heading)
    for row in rows:
        table.add_row(*(str(row[field]) for field in columns))
    _stderr().print(table)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every method plugin, the data it takes, and what it learns."""
    from .registry import all_methods

    rows = [{"name": n, "data": c.data_kind, "description": c.description} for n, c in all_methods().items()]
    _listing("methods", {"name": "name", "data": "data", "description": "what it learns"}, rows, "methods", as_json)


@app.command()
def recipes(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every bundled recipe (use one with --recipe NAME)."""
    from .recipe import RECIPES_DIR, bundled_recipes, read_yaml

    rows = []
    for name in bundled_recipes():
        path = RECIPES_DIR / f"{name}.yaml"
        text = path.read_text()
        first = text.splitlines()[0] if text else ""
        rows.append({
            "name": name,
            "method": (read_yaml(path).get("method") or {}).get("name", ""),
            "path": str(path),
            "description": first.lstrip("# ").strip() if first.startswith("#") else "",
        })
    _listing("bundled recipes", {"name": "name", "method": "method", "description": "what it is"}, rows, "recipes", as_json)


# ---------------------------------------------------------------- entry point

def main(argv: Optional[List[str]] = None) -> None:
    """Run the CLI: bad input is one line on stderr and exit code 2, an interrupt exits 130."""
    import click

    args = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    code: Any = 0
    try:
        command.main(args=args, prog_name="sslcli", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        code = 130
    except UserError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        code = getattr(exc, "exit_code", 2)
    except Exception as exc:
        from .engine import Interrupted

        if isinstance(exc, Interrupted):
            print(str(exc), file=sys.stderr)
            code = 130
        else:
            raise
    sys.exit(code)
