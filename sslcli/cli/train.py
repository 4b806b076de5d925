"""`sslcli pretrain` and `sslcli finetune`: the commands that train and write a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..output import emit, stderr, table
from ._app import DATA_HELP, DEVICE_HELP, EVAL_DATA_HELP, DATA_ROOT_HELP, JSON_HELP, MODEL_HELP, command
from .complete import complete_methods, complete_recipes, complete_settings


@command()
def pretrain(
    method: Optional[str] = typer.Option(None, "--method", "-m", autocompletion=complete_methods,
                                         help="Method plugin; alone it uses the bundled recipe of that name."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", autocompletion=complete_recipes,
                                         help="A recipe YAML file or a bundled recipe name."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=DATA_HELP + " (data.source)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/METHOD-TIMESTAMP)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Any timm model name (backbone.name)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (train.epochs)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (train.batch_size)."),
    set_: List[str] = typer.Option([], "--set", "-s", autocompletion=complete_settings,
                                   help="Override any recipe key: --set optim.lr=0.1 (repeatable)."),
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
    from .. import api
    from ..errors import UserError

    if resume_auto and (resume or force):
        raise UserError("--resume auto decides by itself whether to continue; drop --resume and --force")
    console = stderr()
    result = api.pretrain(recipe, method=method, data=data, out=out, backbone=backbone, epochs=epochs,
                          batch_size=batch_size, settings=set_, resume="auto" if resume_auto else resume,
                          resume_from=resume_from, force=force, device=device, console=console)
    if not as_json:
        console.print(f"done in {result['seconds']:.0f} s; backbone: {result['backbone']}")
    emit(result, as_json)


@command()
def finetune(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: Optional[str] = typer.Option(None, "--data", "-d", help=EVAL_DATA_HELP),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT_HELP),
    fraction: float = typer.Option(1.0, "--fraction", min=1e-6, max=1.0,
                                   help="Train on this class-balanced fraction of the labels (0.01, 0.1: semi-supervised)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (train.epochs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/finetune-TIMESTAMP)."),
    recipe: str = typer.Option("finetune", "--recipe", "-r", autocompletion=complete_recipes,
                               help="Recipe file or bundled name."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (train.batch_size)."),
    set_: List[str] = typer.Option([], "--set", "-s", autocompletion=complete_settings,
                                   help="Override any recipe key (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace the run in a non-empty --out."),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fine-tune the whole network with labels from the model's weights and a new linear head,
    through the same engine and recipes as pretraining; reports val top-1/top-5.

    [dim]Example: sslcli finetune runs/a --data synthetic:shapes --fraction 0.1 --json[/dim]
    """
    from .. import api

    result = api.finetune(model, data, data_root=data_root, fraction=fraction, epochs=epochs, out=out, recipe=recipe,
                          batch_size=batch_size, settings=set_, force=force, device=device, console=stderr())
    if not as_json:
        table(f"fine-tune  {model} on {result['data']}", {"fraction": "fraction", "n_train": "train images",
                                                         "top1": "val top-1", "top5": "val top-5"}, [result])
    emit(result, as_json)
