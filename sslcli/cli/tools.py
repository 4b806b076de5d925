"""`sslcli export`, `info`, `write-clips`, `methods` and `recipes`: what surrounds training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..output import emit, listing, stderr, table
from ._app import JSON_HELP, MODEL_HELP, TOWER_HELP, command

FORMAT_HELP = ("timm (a folder: timm.create_model('local-dir:FOLDER', pretrained=True)), torchscript (.pt), "
               "pt2 (.pt2, torch.export), onnx (.onnx; pip install \"sslcli\\[onnx]\").")  # \\[ keeps rich from reading [onnx] as markup


@command()
def export(
    model: str = typer.Argument(..., help=MODEL_HELP),
    format: str = typer.Option(..., "--format", "-f", help=FORMAT_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The file (or, for timm, the folder) to write."),
    with_head: bool = typer.Option(False, "--with-head", help="Append the method's projection head (joint-embedding "
                                   "runs): the network then gives the embeddings the loss compared."),
    tower: str = typer.Option("vision", "--tower", help=TOWER_HELP),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Export a backbone for use outside sslcli, checked against the torch model (batch size free),
    with its input size and normalisation in OUT.json beside a file.

    [dim]Example: sslcli export runs/a --format onnx --out a.onnx[/dim]
    """
    from .. import api
    from ..export import describe

    result = api.export_model(model, format, out, with_head=with_head, tower=tower, force=force)
    if not as_json:
        stderr().print(describe(result))
    emit(result, as_json)


@command()
def info(
    run: Path = typer.Argument(..., help="A run folder from `sslcli pretrain` or `finetune`."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What a run folder holds: method, backbone, data, epochs done of planned, the last epoch's
    metrics, wall time, its files, and whether --resume can continue it.

    [dim]Example: sslcli info runs/a --json[/dim]
    """
    from .. import api

    result = api.info(run)
    if not as_json:
        rows = [{"key": k, "value": result[k]} for k in ("method", "backbone", "data") if result[k] is not None]
        rows.append({"key": "epochs", "value": f"{result['epochs_done']} of {result['epochs_planned']}"})
        rows.append({"key": "wall time", "value": f"{result['wall_seconds']:.0f} s over {result['steps']} steps"})
        last = result["last_epoch"] or {}
        shown = ("loss", "top1", "knn_top1", "embedding_std")
        rows += [{"key": f"last {k}", "value": f"{last[k]:.4g}"} for k in shown if isinstance(last.get(k), float)]
        rows.append({"key": "resume", "value": result["resume"]})
        if result["writer"]:
            rows.append({"key": "being written by", "value": result["writer"]})
        size = sum(f["bytes"] for f in result["files"])
        rows.append({"key": "files", "value": f"{len(result['files'])}, {size / 1e6:.1f} MB"})
        table(f"run {run}", {"key": "", "value": ""}, rows)
    emit(result, as_json)


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
    from ..data.export import export_source
    from ..data.media import require_av
    from ..data.sources import ClipSettings, open_source

    require_av()
    ds = open_source(data, image_size or "auto", kind="video", clips=ClipSettings(fps=fps),
                     synthetic_train=synthetic_train or "auto", synthetic_val=synthetic_val or "auto")
    written = export_source(ds, out, limit)
    result = {"out": str(out), "files": written, "fps": fps, "image_size": ds.image_size, "classes": ds.classes}
    if not as_json:
        stderr().print(f"wrote {sum(written.values())} clips to {out} ({', '.join(f'{k}: {v}' for k, v in written.items())})")
    emit(result, as_json)


@command()
def methods(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every method plugin, the data it takes, and what it learns."""
    from .. import api

    listing("methods", {"name": "name", "data": "data", "description": "what it learns"}, api.list_methods(), "methods",
            as_json)


@command()
def recipes(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Every bundled recipe (use one with --recipe NAME), the data it expects and the figure its
    source reports."""
    from .. import api

    rows = api.list_recipes()
    if as_json:
        emit({"recipes": rows}, True)
        return
    shown = [{**r, "data": r["data"] or "", "expect": r["expect"] or ""} for r in rows]
    table("bundled recipes", {"name": "name", "method": "method", "description": "what it is", "data": "data",
                              "expect": "what its source reports"}, shown)
