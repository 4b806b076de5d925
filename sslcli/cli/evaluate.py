"""`sslcli knn`, `probe` and `visualize-neighbours`: judging a backbone's frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..output import emit, stderr, table
from ._app import DATA_ROOT_HELP, DEVICE_HELP, EVAL_DATA_HELP, FRAMES_HELP, JSON_HELP, MODEL_HELP, TOWER_HELP, command


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
    from .. import api

    result = api.knn(model, data, data_root=data_root, frames=frames, tower=tower, k=k, temperature=temperature,
                     layer=layer, batch_size=batch_size, device=device)
    if not as_json:
        rows = result.get("sweep", [result])
        table(f"kNN  {model} on {result['data']}  (layer {layer}, T={temperature:g}, {result['n_train']} train, "
              f"{result['n_val']} val)", {"k": "k", "top1": "top-1", "top5": "top-5"}, rows)
    emit(result, as_json)


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
    from .. import api

    result = api.probe(model, data, data_root=data_root, frames=frames, tower=tower, layers=layers, epochs=epochs,
                       lr=lr, weight_decay=weight_decay, batch_size=batch_size, plot=plot, device=device)
    if not as_json:
        table(f"linear probe  {model} on {result['data']}  ({result['n_train']} train, {result['n_val']} val, "
              f"{result['seconds']:.0f} s)", {"layer": "layer", "dims": "dims", "top1": "top-1", "top5": "top-5"},
              result["layers"])
    emit(result, as_json)


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
    from .. import api

    result = api.visualize_neighbours(model, out, data, data_root=data_root, frames=frames, tower=tower,
                                      query_tower=query_tower, queries=queries, query_files=query, k=k, seed=seed,
                                      device=device)
    if not as_json:
        stderr().print(f"wrote {result['out']} ({result['queries']} queries x {k} neighbours; "
                       f"{result['same_class_fraction']:.0%} of neighbours share the query's class)")
    emit(result, as_json)
