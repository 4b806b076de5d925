"""The `sslcli` command line. Commands are thin: they parse options, then import the heavy
modules (torch, timm) only when they run, so `sslcli --help` answers at once."""

from __future__ import annotations

import errno
import functools
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError
from .output import emit as _emit, listing as _listing, quiet, stderr as _stderr, table as _table

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
DATA_HELP = ("synthetic:shapes, synthetic:moving-shapes, an image or video folder (train/ and val/ of class folders, "
             "class folders, or flat), cifar10, cifar100, stl10.")
MODEL_HELP = "A run folder from `sslcli pretrain`, a backbone.safetensors file, or random:TIMM_NAME (the random-init floor)."


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

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
                from .engine import Interrupted

                if not isinstance(exc, Interrupted):
                    raise
                if not quiet():
                    print(str(exc), file=sys.stderr)
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(run)

    return register


# ---------------------------------------------------------------- pretrain

@command()
def pretrain(
    method: Optional[str] = typer.Option(None, "--method", "-m", help="Method plugin; alone it uses the bundled recipe of that name."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="A recipe YAML file or a bundled recipe name."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " (data.source)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/METHOD-TIMESTAMP)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Any timm model name (backbone.name)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (train.epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (train.batch_size)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override any recipe key: --set optim.lr=0.1 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint; "
                                "--resume auto: continue it if --out holds one, else start (for requeued jobs)."),
    resume_auto: bool = typer.Option(False, "--resume-auto", hidden=True),
    resume_from: Optional[Path] = typer.Option(None, "--resume-from", help="Continue the run in --out from this "
                                               "checkpoint (e.g. its checkpoints/epoch-4.pt) instead of the last."),
    force: bool = typer.Option(False, "--force", help="Replace the run in a non-empty --out."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (train.device)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Pretrain a backbone with a self-supervised method and write a run folder.

    [dim]Example: sslcli pretrain --method simclr --out runs/a[/dim]
    """
    from .recipe import apply_overrides, parse_set, resolve_recipe
    from .runfolder import check_out, create_out, load_raw_recipe

    overrides = [parse_set(item) for item in set_]
    if resume_auto:
        if resume or force:
            raise UserError("--resume auto decides by itself whether to continue; drop --resume and --force")
        from .runfolder import holds_run

        resume = out is not None and holds_run(out)
    if resume_from is not None:
        if not resume_from.is_file():
            raise UserError(f"--resume-from '{resume_from}' is not a file; give a checkpoint such as RUN/checkpoints/epoch-4.pt")
        resume = True
    if resume and force:
        raise UserError("--resume and --force contradict each other; pass one of them")
    raw = load_raw_recipe(method, recipe, out, resume)
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

    from .engine import Trainer, ranks

    with ranks.joined(resolved.train.device):  # under torchrun: join the other processes
        check_out(out, resume, force)
        ranks.barrier()  # every rank has checked --out before rank 0 creates it
        console = _stderr()
        trainer = Trainer(resolved, out, console)
        trainer.resume_from = resume_from
        trainer.prepare(resume)  # everything that can be refused is refused before anything is written
        with ranks.on_main(lambda: create_out(out, force and not resume, resume)):  # one writer per run folder
            console.print(f"pretraining [bold]{resolved.method.name}[/bold] on {resolved.data.source} -> {out}",
                          soft_wrap=True)
            result = trainer.run(resume=resume)
    if not as_json:
        console.print(f"done in {result['seconds']:.0f} s; backbone: {result['backbone']}")
    _emit(result, as_json)


# ---------------------------------------------------------------- evaluation

DEVICE_HELP = "auto, cpu or cuda."
FRAMES_HELP = "Clips: evenly spaced frames whose features are averaged. Default: the run's data.eval_frames, else 8."
DATA_ROOT_HELP = "Folder holding the torchvision set named by --data (cifar10, cifar100, stl10). Default: the run's data.root."
TOWER_HELP = "vision (the backbone), or audio: an audio-visual run's audio tower, hearing each clip's sound."
EVAL_DATA_HELP = DATA_HELP + " Default: the run's own data, else synthetic:shapes (stderr says which)."


@command()
def knn(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=EVAL_DATA_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help=FRAMES_HELP),
    tower: str = typer.Option("vision", "--tower", help=TOWER_HELP),
    k: str = typer.Option("20", "--k", help="Neighbours that vote; a list such as 10,20,50 sweeps in one feature pass."),
    temperature: float = typer.Option(0.07, "--temperature", "-t", min=1e-6, help="Vote weight exp(similarity / T)."),
    layer: str = typer.Option("last", "--layer", help="last (the pooled output) or a layer name such as layer3."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per feature-extraction batch."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Weighted kNN accuracy of a backbone's features, from the train split to the val split.

    [dim]Example: sslcli knn runs/a --data synthetic:shapes --json[/dim]
    """
    from .backbones import parse_model
    from .distributed import joined
    from .evaluation.run import choose_data, run_knn

    model = parse_model(model)  # MODEL is parsed here, once
    choice = choose_data(model, data, data_root)
    with joined(device):  # under torchrun the ranks share the feature extraction
        result = run_knn(model, choice, k=k, temperature=temperature, layer=layer, batch_size=batch_size, device=device,
                         frames=frames, tower=tower)
    if not as_json:
        rows = result.get("sweep", [result])
        _table(f"kNN  {model} on {choice.source}  (layer {layer}, T={temperature:g}, {result['n_train']} train, {result['n_val']} val)",
               {"k": "k", "top1": "top-1", "top5": "top-5"}, rows)
    _emit(result, as_json)


@command()
def probe(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=EVAL_DATA_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help=FRAMES_HELP),
    tower: str = typer.Option("vision", "--tower", help=TOWER_HELP),
    layers: str = typer.Option("last", "--layers", help="last, all, or names as timm reports them: stem,layer1,...,layer4."),
    epochs: int = typer.Option(100, "--epochs", min=1, max=100_000, help="Epochs of each linear classifier on the cached features."),
    lr: float = typer.Option(1e-3, "--lr", min=0, help="AdamW learning rate (features are standardised)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay", min=0, help="AdamW weight decay."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Classifier batch size."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw accuracy per layer into this PNG file."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Linear probes on frozen features, one per layer: features are extracted once, then a
    linear classifier per layer is trained on train and reported on val.

    [dim]Example: sslcli probe runs/a --data synthetic:shapes --layers all --json[/dim]
    """
    from .backbones import parse_model
    from .distributed import is_main, joined
    from .evaluation.run import choose_data, run_probe

    model = parse_model(model)  # MODEL is parsed here, once
    choice = choose_data(model, data, data_root)
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot '{plot}' must end in .png")
    with joined(device):  # under torchrun the ranks share the feature extraction
        result = run_probe(model, choice, layers=layers, epochs=epochs, lr=lr, weight_decay=weight_decay,
                           batch_size=batch_size, device=device, frames=frames, tower=tower)
        if plot is not None and is_main():  # asked inside the group: outside it every process is "rank 0"
            from .plots import plot_probe

            result["plot"] = str(plot_probe(result["layers"], plot, f"linear probe: {model} on {choice.source}"))
    if not as_json:
        rows = result["layers"]
        _table(f"linear probe  {model} on {choice.source}  ({result['n_train']} train, {result['n_val']} val, "
               f"{result['seconds']:.0f} s)", {"layer": "layer", "dims": "dims", "top1": "top-1", "top5": "top-5"}, rows)
    _emit(result, as_json)


@command()
def finetune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=EVAL_DATA_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    fraction: float = typer.Option(1.0, "--fraction", min=1e-6, max=1.0,
                                   help="Train on this class-balanced fraction of the labels (0.01, 0.1: semi-supervised)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (train.epochs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/finetune-TIMESTAMP)."),
    recipe: str = typer.Option("finetune", "--recipe", "-r", help="Recipe file or bundled name."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (train.batch_size)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="Override any recipe key (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace the run in a non-empty --out."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fine-tune the whole network with labels from the model's weights and a new linear head,
    through the same engine and recipes as pretraining; reports val top-1/top-5.

    [dim]Example: sslcli finetune runs/a --data synthetic:shapes --fraction 0.1 --json[/dim]
    """
    from .finetune import run_finetune

    result = run_finetune(model, data, data_root, fraction=fraction, epochs=epochs, out=out, recipe=recipe,
                          batch_size=batch_size, settings=set_, force=force, device=device, console=_stderr())
    if not as_json:
        _table(f"fine-tune  {model} on {result['data']}", {"fraction": "fraction", "n_train": "train images", "top1": "val top-1",
                                                 "top5": "val top-5"}, [result])
    _emit(result, as_json)


@command("visualize-neighbours")
def visualize_neighbours(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=EVAL_DATA_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    frames: Optional[int] = typer.Option(None, "--frames", min=1, help=FRAMES_HELP),
    tower: str = typer.Option("vision", "--tower", help=TOWER_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The PNG file to write."),
    query_tower: Optional[str] = typer.Option(None, "--query-tower", help="audio: find frames by each query's sound "
                                              "(an audio-visual run with method.fusion=distance). Default: --tower."),
    queries: int = typer.Option(8, "--queries", min=1, help="Random val images to query (by --seed)."),
    query: List[str] = typer.Option([], "--query", help="An image file to query instead (repeatable)."),
    k: int = typer.Option(8, "--k", min=1, help="Neighbours shown per query."),
    seed: int = typer.Option(0, "--seed", help="Which random val images are queried."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """A picture of nearest neighbours: one row per query, then its k nearest training images,
    captioned with class and similarity, framed green (same class) or red (different).

    [dim]Example: sslcli visualize-neighbours runs/a --data synthetic:shapes --out grid.png[/dim]
    """
    from .backbones import parse_model
    from .distributed import joined
    from .evaluation.run import choose_data, run_neighbours

    model = parse_model(model)  # MODEL is parsed here, once
    choice = choose_data(model, data, data_root)
    with joined(device):  # under torchrun the ranks share the feature extraction; rank 0 writes the picture
        result = run_neighbours(model, choice, out, queries=queries, k=k, query_files=query, seed=seed, device=device,
                                frames=frames, tower=tower, query_tower=query_tower)
    if not as_json:
        _stderr().print(f"wrote {result['out']} ({result['queries']} queries x {k} neighbours; "
                        f"{result['same_class_fraction']:.0%} of neighbours share the query's class)")
    _emit(result, as_json)


@command("write-clips")
def write_clips_command(
    data: str = typer.Argument(..., help="A clip source: synthetic:moving-shapes or a video folder."),
    out: Path = typer.Option(..., "--out", "-o", help="A new folder; it becomes a --data source of .mp4 files."),
    limit: Optional[int] = typer.Option(None, "--max", min=1, help="At most this many clips per split."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Frame side in px (default: the source's)."),
    fps: float = typer.Option(8.0, "--fps", min=0.1, max=240, help="Frames per second."),
    synthetic_train: Optional[int] = typer.Option(None, "--synthetic-train", min=1, max=1_000_000,
                                             help="Synthetic sources: training clips."),
    synthetic_val: Optional[int] = typer.Option(None, "--synthetic-val", min=1, max=1_000_000, help="Synthetic sources: val clips."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a clip source out as real video files (H.264 with an AAC soundtrack where the source
    has sound), in train/<class>/ and val/<class>/ folders that `--data` reads back.

    [dim]Example: sslcli write-clips synthetic:moving-shapes --out clips/ --max 20[/dim]
    """
    from .data.export import export_source
    from .data.media import require_av
    from .data.sources import ClipSettings, open_source

    require_av()
    ds = open_source(data, image_size or "auto", kind="video", clips=ClipSettings(fps=fps),
                     synthetic_train=synthetic_train or "auto", synthetic_val=synthetic_val or "auto")
    written = export_source(ds, out, limit)
    result = {"out": str(out), "files": written, "fps": fps, "image_size": ds.image_size, "classes": ds.classes}
    if not as_json:
        _stderr().print(f"wrote {sum(written.values())} clips to {out} ({', '.join(f'{k}: {v}' for k, v in written.items())})")
    _emit(result, as_json)


# ---------------------------------------------------------------- listings

@command()
def methods(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every method plugin, the data it takes, and what it learns."""
    from .registry import all_methods

    rows = [{"name": n, "data": c.data_kind, "description": c.description} for n, c in all_methods().items()]
    _listing("methods", {"name": "name", "data": "data", "description": "what it learns"}, rows, "methods", as_json)


@command()
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
    """Run the CLI (exits with the command's code)."""
    from .launch import run_app

    sys.exit(run_app(app, sys.argv[1:] if argv is None else list(argv)))
