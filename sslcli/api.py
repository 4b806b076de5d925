"""The Python API: what the command line does, for notebooks and scripts. The CLI is built on
these functions. Each checks its input as the CLI does and raises `sslcli.UserError`, whose text
is the CLI's one-line message (what is wrong and how to fix it); each returns the dict that the
CLI prints with `--json`. Progress goes to stderr.

    import sslcli
    run = sslcli.pretrain("simclr", out="runs/a", epochs=2, optim__lr=0.1)
    sslcli.knn(run["out"], data="synthetic:shapes")["top1"]
    backbone = sslcli.load_backbone("runs/a")          # a timm model, eval mode
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional, Union

PathLike = Union[str, Path]


def _overrides(settings: Iterable[str], keys: dict[str, Any]) -> list:
    """`--set KEY=VALUE` strings and keyword overrides (`optim__lr=0.1` or `**{"optim.lr": 0.1}`),
    as (path, value) pairs; keywords win."""
    from .recipe import parse_set

    return [parse_set(item) for item in settings] + [(key.replace("__", ".").split("."), value)
                                                     for key, value in keys.items()]


def pretrain(recipe: Union[str, PathLike, dict, None] = None, *, method: Optional[str] = None,
             data: Optional[str] = None, out: Optional[PathLike] = None, backbone: Optional[str] = None,
             epochs: Optional[int] = None, batch_size: Optional[int] = None, settings: Iterable[str] = (),
             resume: Union[bool, str] = False, resume_from: Optional[PathLike] = None, force: bool = False,
             device: Optional[str] = None, console=None, **overrides: Any) -> dict:
    """Pretrain and write a run folder; returns what `sslcli pretrain --json` prints.

    `recipe` is a bundled recipe name, a YAML file, or a recipe as a dict; a method name alone
    (`"simclr"`) takes the bundled recipe of that name. `resume="auto"` continues the run in `out`
    if it holds one and starts it otherwise."""
    from .errors import UserError
    from .output import stderr
    from .recipe import apply_overrides, resolve_recipe
    from .registry import get_method
    from .runfolder import check_out, create_out, holds_run, load_raw_recipe

    out = Path(out) if out is not None else None
    resume_from = Path(resume_from) if resume_from is not None else None
    if resume == "auto":
        if force:
            raise UserError("--resume auto decides by itself whether to continue; drop --force")
        resume = out is not None and holds_run(out)
    if resume_from is not None:
        if not resume_from.is_file():
            raise UserError(f"--resume-from '{resume_from}' is not a file; give a checkpoint such as RUN/checkpoints/epoch-4.pt")
        resume = True
    if resume and force:
        raise UserError("--resume and --force contradict each other; pass one of them")
    if isinstance(recipe, dict):
        import copy

        raw = load_raw_recipe(method, None, None, False) if method else {}
        raw = {**raw, **copy.deepcopy(recipe)}
        if method:
            raw.setdefault("method", {})["name"] = method
    else:
        raw = load_raw_recipe(method, str(recipe) if recipe is not None else None, out, bool(resume))
    shortcuts = {("data", "source"): data, ("backbone", "name"): backbone, ("train", "epochs"): epochs,
                 ("train", "batch_size"): batch_size, ("train", "device"): device}
    keyed = [(list(key), value) for key, value in shortcuts.items() if value is not None]
    raw = apply_overrides(raw, _overrides(settings, {}) + keyed + _overrides((), overrides))
    resolved = resolve_recipe(raw, lambda name: get_method(name).Config)
    if out is None:
        if resume:
            raise UserError("--resume needs --out, the run folder to continue")
        out = Path("runs") / f"{resolved.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"

    from .engine import Trainer, ranks

    console = console or stderr()
    with ranks.joined(resolved.train.device):  # under torchrun: join the other processes
        check_out(out, bool(resume), force)
        ranks.barrier()  # every rank has checked --out before rank 0 creates it
        trainer = Trainer(resolved, out, console)
        trainer.resume_from = resume_from
        trainer.prepare(bool(resume))  # everything that can be refused is refused before anything is written
        with ranks.on_main(lambda: create_out(out, force and not resume, bool(resume))):  # one writer per folder
            console.print(f"pretraining [bold]{resolved.method.name}[/bold] on {resolved.data.source} -> {out}",
                          soft_wrap=True)
            return trainer.run(resume=bool(resume))


def knn(model: PathLike, data: Optional[str] = None, *, data_root: Optional[str] = None, frames: Optional[int] = None,
        tower: str = "vision", k: Union[int, str] = 20, temperature: float = 0.07, layer: str = "last",
        batch_size: int = 256, device: str = "auto") -> dict:
    """Weighted kNN top-1/top-5 of MODEL's features from the train to the val split (`k="10,20,50"`
    sweeps); without `data`, the run's own data, else synthetic:shapes."""
    from .backbones import parse_model
    from .distributed import joined
    from .evaluation.run import choose_data, run_knn

    ref = parse_model(str(model))
    choice = choose_data(ref, data, data_root)
    with joined(device):  # under torchrun the ranks share the feature extraction
        return run_knn(ref, choice, k=str(k), temperature=temperature, layer=layer, batch_size=batch_size,
                       device=device, frames=frames, tower=tower)


def probe(model: PathLike, data: Optional[str] = None, *, data_root: Optional[str] = None, frames: Optional[int] = None,
          tower: str = "vision", layers: str = "last", epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4,
          batch_size: int = 256, plot: Optional[PathLike] = None, device: str = "auto") -> dict:
    """A linear probe per layer on frozen features (`layers="all"` or "stem,layer1,..."); `plot`
    also draws accuracy per layer into a PNG file."""
    from .backbones import parse_model
    from .distributed import is_main, joined
    from .errors import UserError
    from .evaluation.run import choose_data, run_probe

    ref = parse_model(str(model))
    choice = choose_data(ref, data, data_root)
    plot = Path(plot) if plot is not None else None
    if plot is not None and plot.suffix.lower() != ".png":
        raise UserError(f"--plot '{plot}' must end in .png")
    with joined(device):
        result = run_probe(ref, choice, layers=layers, epochs=epochs, lr=lr, weight_decay=weight_decay,
                           batch_size=batch_size, device=device, frames=frames, tower=tower)
        if plot is not None and is_main():  # asked inside the group: outside it every process is "rank 0"
            from .plots import plot_probe

            result["plot"] = str(plot_probe(result["layers"], plot, f"linear probe: {ref} on {choice.source}"))
    return result


def finetune(model: PathLike, data: Optional[str] = None, *, data_root: Optional[str] = None, fraction: float = 1.0,
             epochs: Optional[int] = None, out: Optional[PathLike] = None, recipe: str = "finetune",
             batch_size: Optional[int] = None, settings: Iterable[str] = (), force: bool = False,
             device: Optional[str] = None, console=None) -> dict:
    """Fine-tune the whole network with labels (on a class-balanced `fraction` of them) and a new
    linear head; returns val top-1/top-5 (also written to OUT/eval.json)."""
    from .errors import UserError
    from .finetune import run_finetune
    from .output import stderr

    if not 0 < fraction <= 1:
        raise UserError(f"fraction must be in (0, 1], got {fraction}")
    return run_finetune(str(model), data, data_root, fraction=fraction, epochs=epochs,
                        out=Path(out) if out is not None else None, recipe=recipe, batch_size=batch_size,
                        settings=list(settings), force=force, device=device, console=console or stderr())


def visualize_neighbours(model: PathLike, out: PathLike, data: Optional[str] = None, *, data_root: Optional[str] = None,
                         frames: Optional[int] = None, tower: str = "vision", query_tower: Optional[str] = None,
                         queries: int = 8, query_files: Iterable[PathLike] = (), k: int = 8, seed: int = 0,
                         device: str = "auto") -> dict:
    """A PNG of each query's k nearest training images, framed green (same class) or red."""
    from .backbones import parse_model
    from .distributed import joined
    from .evaluation.run import choose_data, run_neighbours

    ref = parse_model(str(model))
    choice = choose_data(ref, data, data_root)
    with joined(device):  # the ranks share the feature extraction; rank 0 writes the picture
        return run_neighbours(ref, choice, Path(out), queries=queries, k=k, query_files=[str(q) for q in query_files],
                              seed=seed, device=device, frames=frames, tower=tower, query_tower=query_tower)


def load_backbone(model: PathLike, tower: str = "vision"):
    """MODEL (a run folder, a backbone.safetensors file or random:TIMM_NAME) as a timm model in
    eval mode, mapping normalised images to pooled features; its `pretrained_cfg` holds the input
    size, mean and std it was trained with."""
    from .backbones import load_model

    net, info = load_model(str(model), tower=tower)
    net.pretrained_cfg = {**(getattr(net, "pretrained_cfg", None) or {}), "mean": tuple(info.mean),
                          "std": tuple(info.std), "input_size": (info.in_chans, info.input_size, info.input_size)}
    return net.eval()


def export_model(model: PathLike, format: str, out: PathLike, *, with_head: bool = False, tower: str = "vision",
           force: bool = False) -> dict:
    """Write MODEL as a timm folder, a TorchScript, torch.export (pt2) or ONNX file, checked against
    the torch model, with its input and normalisation in OUT.json."""
    from .export import export_model

    return export_model(str(model), format, Path(out), with_head=with_head, tower=tower, force=force)


def info(run: PathLike) -> dict:
    """What a run folder holds: method, backbone, data, epochs done of planned, last metrics, wall
    time, files and sizes, and whether --resume can continue it."""
    from .engine.info import run_info

    return run_info(Path(run))


def list_methods() -> list[dict]:
    """Every method plugin: its name, the data it takes, what it learns."""
    from .registry import all_methods

    return [{"name": n, "data": c.data_kind, "description": c.description} for n, c in all_methods().items()]


def list_recipes() -> list[dict]:
    """Every bundled recipe: name, method, file, what it is, the data it expects and the figure
    its source reports (where it states them)."""
    from .catalog import recipe_cards

    return recipe_cards()
