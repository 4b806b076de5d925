"""What a run checks and builds before it writes anything: the data (as the method needs it),
the model, one dry step on the data's shape, and the free space for its checkpoints."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ..backbones import BackboneInfo, create_backbone, load_weights_into
from ..data.images import balanced_fraction
from ..data.sources import ClipSettings, DataSource, hear, open_source
from ..device import autocast, guard_small_maps
from ..errors import UserError, last_line, plugin_fault, plugin_guard
from ..methods.base import Method, MethodContext
from ..recipe import Recipe
from ..registry import get_method
from .checkpoints import checkpoint_bytes, existing_ancestor, megabytes
from .views import method_batch


def open_data(recipe: Recipe, warn: Callable[[str], None]) -> DataSource:
    """The training data as `recipe` names it, refused when the method cannot train on it or it
    holds fewer items than one batch."""
    d = recipe.data
    if d.source is None:
        raise UserError("the recipe names no data (data.source is null: it is meant for data of your own); give "
                        "--data FOLDER (see the recipe's '# data:' line in `sslcli recipes`)")
    method_cls = get_method(recipe.method.name)
    ds = open_source(
        d.source, d.image_size, seed=recipe.train.seed, root=d.root, purpose="pretrain",
        synthetic_train=d.synthetic_train, synthetic_val=d.synthetic_val, cache_max_gb=d.cache_max_gb,
        max_bad_fraction=d.max_bad_fraction, warn=warn,
        kind="video" if method_cls.data_kind == "video" and d.kind == "auto" else d.kind,
        clips=ClipSettings(d.fps, d.clip_frames, d.max_clip_seconds, min_frames=d.clip_frames),
    )
    method_cls.check_data(ds, recipe)
    sound = method_cls.sound_plan(recipe)
    if sound is not None:
        ds = hear(ds, sound, method_cls.name)
    if d.fraction < 1:
        if not ds.train.labelled:
            raise UserError(f"data.fraction needs labels to balance classes, but '{d.source}' is unlabelled")
        ds.train = balanced_fraction(ds.train, d.fraction, recipe.train.seed)
    if len(ds.train) < recipe.train.batch_size:
        raise UserError(
            f"train.batch_size {recipe.train.batch_size} is larger than the {len(ds.train)} training "
            f"{'clips' if ds.kind == 'video' else 'images'} "
            f"of '{d.source}'; pass --batch-size {max(1, len(ds.train) // 2)} or less"
        )
    return ds


def build_method(recipe: Recipe, ds: DataSource, device: torch.device,
                 dtype: Optional[torch.dtype] = None) -> tuple[Method, BackboneInfo]:
    """The method with its backbone (from `backbone.weights` when given), seeded, on `device`,
    guarded for the autocast `dtype` it will train in."""
    r = recipe
    torch.manual_seed(r.train.seed)
    backbone, info = create_backbone(r.backbone.name, r.backbone.small_input, ds.image_size, r.backbone.zero_init_last)
    if r.backbone.weights:
        load_weights_into(backbone, info, r.backbone.weights)
    info = replace(info, method=r.method.name)
    method_cls = get_method(r.method.name)
    classes = len(ds.classes) if ds.classes else None
    with plugin_guard(r.method.name, "building its model"):
        method = method_cls(MethodContext(r, backbone, info.feature_dim, ds.image_size, classes))
    if r.train.sync_batchnorm:
        if device.type != "cuda":
            raise UserError("train.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel); "
                            "set train.sync_batchnorm=false on the CPU")
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # momentum copies included
    method = method.to(device)
    if device.type == "cpu" and dtype == torch.bfloat16:
        guard_small_maps(method)
    if r.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method, info


def dry_step(recipe: Recipe, method: Method, ds: DataSource, device: torch.device, dtype) -> None:
    """One forward pass of the method on two random images of the data's size, so a backbone
    or method that cannot take this data fails now, not after the data has loaded for an hour.
    Buffers (queues, banks, norm statistics) and RNG states are left as they were."""
    size = ds.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (2, recipe.data.clip_frames, 3, size, size) if ds.kind == "video" else (2, 3, size, size)
    images = torch.randint(0, 256, shape, generator=gen, device=device, dtype=torch.uint8)
    labels = torch.zeros(2, dtype=torch.long, device=device)
    sound = type(method).sound_plan(recipe)
    buffers = {name: b.clone() for name, b in method.named_buffers()}
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast(device, dtype):
            method.eval()
            audio = torch.randn(2, shape[1], sound.samples, generator=gen, device=device) if sound else None
            method.training_step(method.batch_views(method_batch(method, images, torch.arange(2), labels, audio), gen))
    except UserError:
        raise
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        r = recipe
        raise UserError(
            f"method '{r.method.name}' with backbone '{r.backbone.name}' cannot train on {size}-px images "
            f"({method.crop_size}-px views): {last_line(exc)}; change data.image_size, augment.crop_size or the backbone"
        ) from exc
    except Exception as exc:  # any other fault of a plugin must reach the user as one line too
        raise plugin_fault(recipe.method.name, "its first training step", exc) from exc
    finally:
        method.train()
        with torch.no_grad():
            for name, b in method.named_buffers():
                b.copy_(buffers[name])


def check_space(recipe: Recipe, out: Path, method: Method) -> None:
    """Refuse a run whose checkpoints would not fit in the free space under `out`."""
    # the new checkpoint is written beside the previous one, which a resumed run already holds
    held = sum(f.stat().st_size for f in (out / "checkpoints" / "last.pt", out / "backbone.safetensors") if f.is_file())
    t = recipe.train
    kept = t.epochs // t.keep_every if t.keep_every else 0
    kept = min(kept, t.keep_last) if t.keep_last else kept
    kept -= len(list((out / "checkpoints").glob("epoch-*.pt")))  # a resumed run holds some already
    need = (2 + max(0, kept)) * checkpoint_bytes(method, recipe.optim.name) + 10_000_000 - held
    where = existing_ancestor(out)
    free = shutil.disk_usage(where).free
    if free < need:
        plan = f"a checkpoint, the previous one and {kept} kept epoch-N.pt" if kept > 0 else "a checkpoint and the previous one"
        raise UserError(
            f"--out '{out}' has {megabytes(free)} free, but this run needs about {megabytes(need)} "
            f"({plan}); free some space, choose another --out{' or set train.keep_last' if kept > 0 else ''}"
        )
