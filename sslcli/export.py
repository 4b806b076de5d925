"""`sslcli export`: a backbone, optionally followed by its method's projection head, as a timm
folder, a TorchScript file or an ONNX file, with what feeding it takes (input size,
normalisation, or an audio tower's spectrogram settings) recorded in a JSON file beside it.
Every export is run against the torch model before it is kept, with a batch size other than the
one it was made with."""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
import torch
import torch.nn as nn

from .backbones import BackboneInfo, ModelRef, load_model, parse_model, timm_state_dict
from .errors import UserError
from .files import atomic_write

FORMATS = ("timm", "torchscript", "pt2", "onnx")
SUFFIX = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
TOLERANCE = 1e-4  # largest output difference from the torch model that an export may show


def check_export_out(fmt: str, out: Path, force: bool) -> None:
    """Refuse an unknown format, a file name that does not fit it, or an existing output."""
    if fmt not in FORMATS:
        from .errors import did_you_mean

        raise UserError(f"unknown --format '{fmt}'{did_you_mean(fmt, FORMATS)}; choose one of {', '.join(FORMATS)}")
    if fmt in SUFFIX and out.suffix.lower() != SUFFIX[fmt]:
        raise UserError(f"--out '{out}' must end in {SUFFIX[fmt]} for --format {fmt}")
    if fmt == "timm" and out.suffix:
        raise UserError(f"--out '{out}' names a file; --format timm writes a folder (config.json, model.safetensors)")
    if out.exists() and not force and (out.is_file() or any(out.iterdir())):
        raise UserError(f"--out '{out}' already exists; give a new path, or --force to replace it")
    if not out.parent.is_dir():
        raise UserError(f"the folder of --out '{out}' does not exist; create '{out.parent}' first")


def _with_head(ref: ModelRef, backbone: nn.Module, info: BackboneInfo) -> nn.Module:
    """The backbone followed by the projection head of the run's method, from its last checkpoint."""
    from .engine.checkpoints import load_checkpoint
    from .methods.base import MethodContext
    from .recipe import read_yaml, resolve_recipe
    from .registry import get_method

    folder = ref.run_folder
    if folder is None or not (folder / "recipe.yaml").is_file() or not (folder / "checkpoints" / "last.pt").is_file():
        raise UserError(f"--with-head needs a run folder with recipe.yaml and checkpoints/last.pt; '{ref}' has none")
    recipe = resolve_recipe(read_yaml(folder / "recipe.yaml"), lambda name: get_method(name).Config)
    method = get_method(recipe.method.name)(MethodContext(recipe, backbone, info.feature_dim, info.input_size, None))
    head = getattr(method, "projector", None)
    if not isinstance(head, nn.Module):
        raise UserError(f"method '{recipe.method.name}' has no projection head to export; drop --with-head")
    state = load_checkpoint(folder / "checkpoints" / "last.pt")["model"]
    head.load_state_dict({k[len("projector."):]: v for k, v in state.items() if k.startswith("projector.")})
    return nn.Sequential(backbone, head)


def example_input(info: BackboneInfo, batch: int, tower: str) -> torch.Tensor:
    """A batch of what the exported network takes: normalised images, or an audio tower's spectrograms."""
    gen = torch.Generator().manual_seed(0)
    if tower == "audio":
        from .data.spectrogram import FrontEnd

        front = FrontEnd.from_dict(info.front_end) if info.front_end else FrontEnd()
        return torch.randn(batch, 1, front.bins, front.frames, generator=gen)
    return torch.randn(batch, info.in_chans, info.input_size, info.input_size, generator=gen)


def _write_timm(net: nn.Module, info: BackboneInfo, out: Path) -> Path:
    from safetensors.torch import save

    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    cfg.update(input_size=[info.in_chans, info.input_size, info.input_size], mean=list(info.mean), std=list(info.std))
    if info.small_input:
        raise UserError(f"'{info.timm_name}' here has the small-input stem (3x3 first convolution, no max-pool), which "
                        f"no timm architecture name describes; export it as --format torchscript or onnx")
    config = {"architecture": info.timm_name, "num_classes": 0, "num_features": info.feature_dim,
              **({"model_args": {"in_chans": info.in_chans}} if info.in_chans != 3 else {}),
              "pretrained_cfg": {k: v for k, v in cfg.items() if isinstance(v, (str, int, float, bool, list, tuple))
                                 or v is None}}
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in timm_state_dict(net).items() if not k.startswith(f"{cfg.get('classifier')}.")}
    atomic_write(out / "model.safetensors", save(state))
    atomic_write(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
    return out


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=4096)


def _run_export(fmt: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """Outputs of the exported file at `path` for `x`, read back as a user would."""
    with torch.no_grad():
        if fmt == "torchscript":
            with _quiet_torchscript():
                return torch.jit.load(str(path), map_location="cpu")(x)
        if fmt == "pt2":
            return torch.export.load(str(path)).module()(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@contextlib.contextmanager
def _quiet_torchscript():
    """TorchScript is deprecated in recent PyTorch (pt2 is its successor) but still what C++ and
    mobile runtimes load; its FutureWarnings would repeat on every export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def _write_file(fmt: str, net: nn.Module, x: torch.Tensor, path: Path) -> None:
    if fmt == "torchscript":
        with torch.no_grad(), _quiet_torchscript():
            torch.jit.trace(net, x, check_trace=False).save(str(path))
        return
    if fmt == "pt2":
        torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: _batch_dim()},)), str(path))
        return
    for module in ("onnx", "onnxscript", "onnxruntime"):
        import importlib.util

        if importlib.util.find_spec(module) is None:
            raise UserError(f"--format onnx needs the {module} package; pip install \"sslcli[onnx]\"")
    torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=True,
                      dynamic_shapes=({0: _batch_dim()},), external_data=False, verbose=False)


def export_model(model: str | ModelRef, fmt: str, out: Path, *, with_head: bool = False, tower: str = "vision",
                 force: bool = False) -> dict:
    """Export MODEL to `out` in format `fmt`; the --json result (also written as OUT.json beside a file)."""
    check_export_out(fmt, out, force)
    ref = parse_model(model)
    if tower not in ("vision", "audio"):
        raise UserError(f"unknown --tower '{tower}'; choose vision or audio")
    net, info = load_model(ref, tower=tower)
    if with_head:
        if ref.is_random:
            raise UserError("a random: model has no trained head; drop --with-head")
        if tower == "audio":
            raise UserError("--with-head exports the vision backbone's head; drop it with --tower audio")
        net = _with_head(ref, net, info)
    net = net.eval().float()
    if fmt == "timm":
        if with_head:
            raise UserError("--format timm holds a backbone only; export the head with torchscript or onnx")
        _write_timm(net, info, out)
        check, error = None, 0.0
    else:
        with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
            tmp = Path(scratch) / out.name
            _write_file(fmt, net, example_input(info, 2, tower), tmp)
            check = example_input(info, 3, tower)  # another batch size: the batch dimension is free
            with torch.no_grad():
                expected = net(check)
            got = _run_export(fmt, tmp, check)
            error = float((got - expected).abs().max())
            if got.shape != expected.shape or not error <= TOLERANCE:
                raise UserError(f"the {fmt} export of '{ref}' gives outputs {error:.2g} away from the torch model "
                                f"(more than {TOLERANCE:g}); export it as --format timm instead")
            tmp.replace(out)
    one = example_input(info, 1, tower)
    with torch.no_grad():
        output_dim = int(net(one).shape[-1])
    record = {"format": fmt, "model": str(ref), "tower": tower, "with_head": with_head, "output_dim": output_dim,
              "input": list(one.shape[1:]), "max_abs_error": error,
              "backbone": {k: v for k, v in asdict(info).items() if k not in ("classifier",)}}
    if fmt != "timm":
        atomic_write(out.with_name(out.name + ".json"), (json.dumps(record, indent=2) + "\n").encode())
    return {"out": str(out), **record}


def describe(result: dict) -> str:
    """One line for the terminal."""
    checked = "" if result["format"] == "timm" else f"; largest difference from the torch model {result['max_abs_error']:.2g}"
    return (f"wrote {result['out']} ({result['format']}, input {'x'.join(map(str, result['input']))}, "
            f"output {result['output_dim']}{checked})")
