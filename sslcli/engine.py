"""The one training loop. It knows no method: a plugin makes views and returns a loss; the engine
owns the optimiser, schedule, precision, data order, checkpoints, resume, progress and metrics."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn as nn
from rich.console import Console

from .backbones import BackboneInfo, check_backbone_name, create_backbone, load_weights_into, save_backbone
from .data.images import Batch, Split, balanced_fraction, load_batches
from .data.sources import ClipSettings, DataSource, open_source
from .device import autocast, autocast_dtype, peak_memory_mb, select_device
from .errors import UserError, last_line, plugin_fault, plugin_guard
from .files import atomic_write, remove_stale_tmp
from .methods.base import Method
from .recipe import RESUMABLE_CHANGES, Recipe, resume_conflicts
from .registry import get_method

CHECKPOINT_FORMAT = 1


class TrainingError(UserError):
    """The run itself failed (e.g. the loss diverged); exit code 1, last good checkpoint kept."""

    exit_code = 1


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written. Exit code 130."""


# ---------------------------------------------------------------- optimisation

class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (You et al. 2017, "Large Batch Training of
    Convolutional Networks"). Groups with `lars=False` (biases, norms) get plain SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    ratio = torch.where((p_norm > 0) & (g_norm > 0), group["trust"] * p_norm / g_norm, torch.ones_like(p_norm))
                    grad.mul_(ratio)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad
                else:
                    buf.mul_(group["momentum"]).add_(grad)
                p.add_(buf, alpha=-group["lr"])


def scaled_lr(recipe: Recipe) -> float:
    o, batch = recipe.optim, recipe.train.batch_size
    factor = {"linear": batch / 256, "sqrt": math.sqrt(batch / 256), "none": 1.0}[o.lr_scaling]
    return o.lr * factor


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    lr = scaled_lr(recipe)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(o.momentum, 0.999))
    groups[1]["lars"] = False
    return LARS(groups, lr=lr, momentum=o.momentum, trust=o.trust)


def lr_factor(step: int, total: int, warmup: int, schedule: str, final: float) -> float:
    """Linear warmup from 0 over `warmup` steps, then cosine to `final` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- data order

def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training set for `epoch`: a pure function of (seed, epoch), so a
    resumed run replays exactly the same order."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def iterate_batches(split: Split, order: torch.Tensor, batch_size: int, start: int, workers: int) -> Iterator[Batch]:
    """(uint8 images, labels, indices) batches following `order` (full batches only), from batch
    index `start`; undecodable images are left out of their batch (see `load_batches`)."""
    steps = len(order) // batch_size
    return load_batches(split, [order[i * batch_size:(i + 1) * batch_size] for i in range(start, steps)], workers)


# ---------------------------------------------------------------- checkpoints

def atomic_torch_save(obj, path: Path) -> None:
    """Serialise in memory, then write atomically (see `atomic_write`): torch's own writer turns
    a full disk into an opaque RuntimeError, a plain write gives the OSError that says so."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at '{path}'; start without --resume (or with --force to overwrite)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}): it is damaged or not an sslcli "
                        f"checkpoint; start again with --force") from None


def checkpoint_bytes(method: nn.Module, optimizer_name: str) -> int:
    """About how large checkpoints/last.pt plus backbone.safetensors will be."""
    state = sum(t.numel() * t.element_size() for t in method.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    backbone = sum(t.numel() * t.element_size() for t in method.backbone.state_dict().values())
    return state + (2 if optimizer_name == "adamw" else 1) * trained + backbone


def _kept(ckpt_dir: Path) -> str:
    """Where the last good checkpoint is, for an error message."""
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        return "no checkpoint had been written yet"
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
        where = f"epoch {epoch['epoch']}" + (f", step {epoch['step_in_epoch']}" if epoch["step_in_epoch"] else "")
    except Exception:  # naming the file is enough
        where = "the last save"
    return f"the last good checkpoint ({where}) is kept in {last}"


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


# ---------------------------------------------------------------- the loop

class Trainer:
    """Pretrains `recipe` into run folder `out`. `prepare()` checks everything that can be refused
    before the folder is touched; `run()` trains."""

    def __init__(self, recipe: Recipe, out: Path, console: Optional[Console] = None):
        self.recipe = recipe
        self.out = out
        self.console = console or Console(stderr=True)
        self.device = select_device(recipe.train.device)
        self.dtype = autocast_dtype(recipe.train.precision, self.device, training=True)
        self._stop_signal: Optional[int] = None
        self.data: Optional[DataSource] = None
        self.method: Optional[Method] = None
        self.info: Optional[BackboneInfo] = None
        self.resume_state: Optional[dict] = None

    # -- set-up
    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, highlight=False)

    def open_data(self) -> DataSource:
        d = self.recipe.data
        method_cls = get_method(self.recipe.method.name)
        ds = open_source(
            d.source, d.image_size, seed=self.recipe.train.seed, root=d.root, purpose="pretrain",
            synthetic_train=d.synthetic_train, synthetic_val=d.synthetic_val, cache_max_gb=d.cache_max_gb,
            max_bad_fraction=d.max_bad_fraction, warn=self._warn,
            kind="video" if method_cls.data_kind == "video" and d.kind == "auto" else d.kind,
            clips=ClipSettings(d.fps, d.clip_frames, d.max_clip_seconds, min_frames=d.clip_frames),
        )
        method_cls.check_data(ds, self.recipe)
        if d.fraction < 1:
            if not ds.train.labelled:
                raise UserError(f"data.fraction needs labels to balance classes, but '{d.source}' is unlabelled")
            ds.train = balanced_fraction(ds.train, d.fraction, self.recipe.train.seed)
        if len(ds.train) < self.recipe.train.batch_size:
            raise UserError(
                f"train.batch_size {self.recipe.train.batch_size} is larger than the {len(ds.train)} training "
                f"{'clips' if ds.kind == 'video' else 'images'} "
                f"of '{d.source}'; pass --batch-size {max(1, len(ds.train) // 2)} or less"
            )
        return ds

    def build(self, ds: DataSource) -> tuple[Method, BackboneInfo]:
        r = self.recipe
        torch.manual_seed(r.train.seed)
        backbone, info = create_backbone(r.backbone.name, r.backbone.small_input, ds.image_size, r.backbone.zero_init_last)
        if r.backbone.weights:
            load_weights_into(backbone, info, r.backbone.weights)
        info = replace(info, method=r.method.name)
        method_cls = get_method(r.method.name)
        classes = len(ds.classes) if ds.classes else None
        with plugin_guard(r.method.name, "building its model"):
            method = method_cls(r.method, r, backbone, info.feature_dim, ds.image_size, classes)
        method = method.to(self.device)
        if r.train.channels_last:
            method = method.to(memory_format=torch.channels_last)
        return method, info

    def prepare(self, resume: bool = False) -> DataSource:
        """Refuse now, before anything is written, whatever would fail later: the backbone name,
        the data (readable, decodable, labelled as the method needs, large enough for a batch),
        the method and backbone on this data (one dry step), free space for a checkpoint, and the
        checkpoint to resume."""
        if self.data is not None:
            return self.data
        if resume:  # the checkpoint first: it is quicker to read than the data
            self.resume_state = self._read_resume()
        check_backbone_name(self.recipe.backbone.name)
        ds = self.open_data()
        self.method, self.info = self.build(ds)
        with plugin_guard(self.recipe.method.name, "setup on the training data"):
            self.method.setup(ds.train)
        self._dry_step(self.method, ds)
        self._check_space()
        if self.resume_state is not None:
            self._load_model_state(self.resume_state)
        self.data = ds
        return ds

    def _dry_step(self, method: Method, ds: DataSource) -> None:
        """One forward pass of the method on two random images of the data's size, so a backbone
        or method that cannot take this data fails now, not after the data has loaded for an hour.
        Buffers (queues, banks, norm statistics) and RNG states are left as they were."""
        size = ds.image_size
        gen = torch.Generator(device=self.device).manual_seed(0)
        shape = (2, self.recipe.data.clip_frames, 3, size, size) if ds.kind == "video" else (2, 3, size, size)
        images = torch.randint(0, 256, shape, generator=gen, device=self.device, dtype=torch.uint8)
        labels = torch.zeros(2, dtype=torch.long, device=self.device) if method.uses_labels else None
        buffers = {name: b.clone() for name, b in method.named_buffers()}
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast(self.device, self.dtype):
                method.eval()
                method.training_step(method.batch_views(images, gen, labels, **_indices(method, torch.arange(2))))
        except UserError:
            raise
        except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
            r = self.recipe
            raise UserError(
                f"method '{r.method.name}' with backbone '{r.backbone.name}' cannot train on {size}-px images "
                f"({method.crop_size}-px views): {last_line(exc)}; change data.image_size, augment.crop_size or the backbone"
            ) from exc
        except Exception as exc:  # any other fault of a plugin must reach the user as one line too
            raise plugin_fault(self.recipe.method.name, "its first training step", exc) from exc
        finally:
            method.train()
            with torch.no_grad():
                for name, b in method.named_buffers():
                    b.copy_(buffers[name])

    def _check_space(self) -> None:
        # the new checkpoint is written beside the previous one, which a resumed run already holds
        held = sum(f.stat().st_size for f in (self.out / "checkpoints" / "last.pt", self.out / "backbone.safetensors")
                   if f.is_file())
        need = 2 * checkpoint_bytes(self.method, self.recipe.optim.name) + 10_000_000 - held
        where = _existing_ancestor(self.out)
        free = shutil.disk_usage(where).free
        if free < need:
            raise UserError(
                f"--out '{self.out}' has {_megabytes(free)} free, but this run needs about {_megabytes(need)} "
                f"(a checkpoint and the previous one); free some space or choose another --out"
            )

    def _read_resume(self) -> Optional[dict]:
        """The checkpoint to continue from, checked against this recipe; None when the run was
        stopped before its first checkpoint (it then starts from the beginning)."""
        path = self.out / "checkpoints" / "last.pt"
        if not path.exists() and (self.out / "recipe.yaml").is_file():
            return None
        ckpt = load_checkpoint(path)
        self._check_compatible(ckpt)
        return ckpt

    def _load_model_state(self, ckpt: dict) -> None:
        try:
            self.method.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as exc:
            raise UserError(f"checkpoint of '{self.out}' does not fit this recipe's model "
                            f"({str(exc).splitlines()[0][:200]}); resume with the run's own recipe.yaml") from None

    def _check_compatible(self, ckpt: dict) -> None:
        r = self.recipe
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError("checkpoint format is not one this sslcli version reads; start a new run with --force")
        if ckpt.get("method") != r.method.name or ckpt.get("backbone") != r.backbone.name:
            raise UserError(
                f"checkpoint is from method '{ckpt.get('method')}' with backbone '{ckpt.get('backbone')}', but the recipe "
                f"asks for '{r.method.name}' with '{r.backbone.name}'; resume with the run's own recipe.yaml"
            )
        conflicts = resume_conflicts(ckpt.get("recipe") or {}, r)
        if conflicts:
            more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            raise UserError(
                f"--resume: the recipe differs from the run's in {', '.join(conflicts[:3])}{more}; a resumed run may "
                f"only change {', '.join(sorted(RESUMABLE_CHANGES))}: drop the other changes or start a new run"
            )

    # -- signals
    @contextlib.contextmanager
    def _catch_signals(self):
        def handler(signum, frame):
            self._stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def run(self, resume: bool = False) -> dict:
        r = self.recipe
        ds = self.prepare(resume)
        method, info = self.method, self.info
        optimizer = build_optimizer(method, r)
        steps_per_epoch = len(ds.train) // r.train.batch_size
        total_steps = steps_per_epoch * r.train.epochs
        warmup = int(round(r.optim.warmup_epochs * steps_per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, warmup, r.optim.schedule, r.optim.final_lr_fraction)
        )
        scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        aug_gen = torch.Generator(device=self.device).manual_seed(r.train.seed + 1)
        workers = self._workers(ds.train)

        ckpt_dir = self.out / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(ckpt_dir)
        remove_stale_tmp(self.out)
        start_epoch, start_step, global_step = 0, 0, 0
        ckpt = self.resume_state
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            aug_gen.set_state(ckpt["rng"]["augment"])
            if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
            start_epoch, start_step, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
            self.console.print(f"resuming from epoch {start_epoch}, step {global_step}")
            # a kill between writing last.pt and the backbone leaves the backbone a save behind, and a
            # run resumed at its very end trains no step that would write it again
            save_backbone(method.backbone, replace(info, epoch=start_epoch), self.out)
        elif resume:
            self.console.print("no checkpoint was written before the run stopped; starting from the beginning")
        self.resume_state = None  # the optimiser state now lives in the optimiser
        if resume:
            self._trim_metrics(global_step)
        atomic_write(self.out / "recipe.yaml", r.to_yaml().encode())
        self._write_skipped()

        def save(epoch: int, step_in_epoch: int) -> None:
            if not all(torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point()):
                raise TrainingError(
                    f"the weights became non-finite by epoch {epoch}, step {global_step}; {_kept(ckpt_dir)}; "
                    f"lower optim.lr (now {r.optim.lr}) or use --set train.precision=fp32"
                )
            state = {
                "format": CHECKPOINT_FORMAT,
                "method": r.method.name,
                "backbone": r.backbone.name,
                "recipe": r.to_dict(),
                "model": method.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "rng": {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()},
            }
            if self.device.type == "cuda":
                state["rng"]["cuda"] = torch.cuda.get_rng_state()
            atomic_torch_save(state, ckpt_dir / "last.pt")
            if step_in_epoch == 0 and r.train.keep_every and epoch % r.train.keep_every == 0:
                atomic_torch_save(state, ckpt_dir / f"epoch-{epoch}.pt")
            save_backbone(method.backbone, replace(info, epoch=epoch), self.out)

        metrics_file = open(self.out / "metrics.jsonl", "a")
        progress = self._progress()
        task = progress.add_task(r.method.name, total=total_steps, completed=global_step, loss=float("nan"), lr=0.0, ips=0.0)
        history: list[dict] = []
        started = time.time()
        bad_seen = len(ds.bad or ())
        try:
            with self._catch_signals(), progress:
                for epoch in range(start_epoch, r.train.epochs):
                    method.train()
                    order = epoch_order(len(ds.train), r.train.seed, epoch)
                    sums: dict[str, float] = {}
                    counts: dict[str, int] = {}  # per key: a multi-task step reports only its own task
                    count = 0
                    epoch_start, seen = time.time(), 0
                    first = start_step if epoch == start_epoch else 0
                    split = ds.train.for_epoch(r.train.seed, epoch)  # clips: this epoch's frame windows
                    batches = iterate_batches(split, order, r.train.batch_size, first, workers)
                    for step, (images, labels, indices) in enumerate(batches, first):
                        if ds.bad is not None and len(ds.bad) != bad_seen:
                            bad_seen = len(ds.bad)
                            self._write_skipped()
                        if images.shape[0] < 2:  # every image of this batch was undecodable
                            continue
                        t0 = time.time()
                        loss, metrics = self._step(method, images, labels, indices, aug_gen, optimizer, scaler)
                        if not math.isfinite(loss):
                            raise TrainingError(
                                f"loss became {loss} at epoch {epoch + 1}, step {global_step + 1}; {_kept(ckpt_dir)}; "
                                f"lower optim.lr (now {r.optim.lr}) or use --set train.precision=fp32"
                            )
                        scheduler.step()
                        global_step += 1
                        method.on_step_end(global_step / total_steps)
                        seen += images.shape[0]
                        count += 1
                        for k, v in {"loss": loss, **metrics}.items():
                            sums[k] = sums.get(k, 0.0) + v
                            counts[k] = counts.get(k, 0) + 1
                        lr = optimizer.param_groups[0]["lr"]
                        ips = images.shape[0] / max(1e-9, time.time() - t0)
                        progress.update(task, advance=1, loss=loss, lr=lr, ips=ips)
                        if global_step % r.train.log_every == 0:
                            self._log(metrics_file, {"step": global_step, "epoch": epoch + (step + 1) / steps_per_epoch,
                                                     "loss": loss, "lr": lr, "images_per_s": ips, **metrics})
                        if self._stop_signal is not None and step + 1 < steps_per_epoch:
                            save(epoch, step + 1)
                            raise Interrupted(f"interrupted at epoch {epoch + 1}, step {global_step}; checkpoint saved")
                    elapsed = time.time() - epoch_start
                    record = {"epoch": epoch + 1, "step": global_step, **{k: v / counts[k] for k, v in sums.items()},
                              "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(1e-9, elapsed),
                              "epoch_seconds": elapsed, **self._epoch_metrics(method, ds)}
                    self._log(metrics_file, record)
                    history.append(record)
                    shown = "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "epoch"))
                    progress.console.print(f"epoch {epoch + 1}/{r.train.epochs}  {shown}", soft_wrap=True)
                    warning = method.epoch_warning(record)
                    if warning:
                        progress.console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
                    if (epoch + 1) % r.train.checkpoint_every == 0 or epoch + 1 == r.train.epochs or self._stop_signal:
                        save(epoch + 1, 0)
                    if self._stop_signal is not None and epoch + 1 < r.train.epochs:
                        raise Interrupted(f"interrupted after epoch {epoch + 1}, step {global_step}; checkpoint saved")
        except OSError as exc:  # a full disk, a lost mount: the previous checkpoint is still whole
            raise TrainingError(
                f"writing to '{exc.filename or self.out}' failed ({exc.strerror or exc}) at step {global_step}; "
                f"{_kept(ckpt_dir)}: free some space, then continue with --resume"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                metrics_file.close()
                self._write_skipped()
            self.method = method
            self._plot()
        self._visualize(method, ds)
        return {
            "out": str(self.out),
            "method": r.method.name,
            "backbone": str(self.out / "backbone.safetensors"),
            "epochs": r.train.epochs,
            "steps": global_step,
            "seconds": round(time.time() - started, 2),
            "skipped_images": len(ds.bad or ()),
            "epoch_seconds": round(sum(h["epoch_seconds"] for h in history) / len(history), 2) if history else None,
            "peak_memory_mb": peak_memory_mb(self.device),
            "final": history[-1] if history else None,
        }

    def _epoch_metrics(self, method: Method, ds: DataSource) -> dict[str, float]:
        method.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.dtype):
                return method.epoch_metrics(ds.val)
        finally:
            method.train()

    def _write_skipped(self) -> None:
        """skipped.txt: one 'path<TAB>reason' line per image that could not be decoded."""
        bad = self.data.bad if self.data is not None else None
        if bad is not None and len(bad):
            atomic_write(self.out / "skipped.txt", bad.lines().encode())

    def _step(self, method: Method, images, labels, indices, gen, optimizer, scaler) -> tuple[float, dict[str, float]]:
        images = images.to(self.device, non_blocking=True)
        views = method.batch_views(images, gen, labels.to(self.device) if method.uses_labels else None,
                                   **_indices(method, indices.to(self.device)))
        if self.recipe.train.channels_last:
            views = _channels_last(views)
        with autocast(self.device, self.dtype):
            loss, metrics = method.training_step(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach()), {k: float(v) for k, v in metrics.items()}

    def _visualize(self, method: Method, ds: DataSource, count: int = 8) -> None:
        """visual.png: the method's own picture (e.g. colourised or inpainted val images)."""
        split = ds.val if ds.val is not None and len(ds.val) else ds.train
        pick = torch.linspace(0, len(split) - 1, min(count, len(split))).long()
        try:
            images = torch.stack([image for image in split.stills(pick.tolist()) if image is not None])
            method.eval()
            with torch.no_grad():
                picture = method.visualize(images.to(self.device))
            if picture is not None:
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG")
                atomic_write(self.out / "visual.png", buffer.getvalue())
        except Exception as exc:  # a picture must never cost a run
            self.console.print(f"[yellow]warning: visual.png not written ({exc})[/yellow]")
        finally:
            method.train()

    def _plot(self) -> None:
        from .evaluation.plots import plot_curves

        try:
            plot_curves(self.out)
        except Exception as exc:  # a plot must never cost a run
            self.console.print(f"[yellow]warning: curves.png not written ({exc})[/yellow]")

    def _workers(self, split: Split) -> int:
        w = self.recipe.data.workers
        if w != "auto":
            return int(w)
        return 0 if split.in_memory else min(4, max(1, (os.cpu_count() or 2) - 1))

    def _trim_metrics(self, global_step: int) -> None:
        """Drop records written after the checkpoint we resume from, so none appears twice."""
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if line.strip() and json.loads(line).get("step", 0) <= global_step:
                    kept.append(line)
            except ValueError:  # a line cut short by a kill
                continue
        atomic_write(path, "".join(line + "\n" for line in kept).encode())

    @staticmethod
    def _log(f, record: dict) -> None:
        f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}) + "\n")
        f.flush()

    def _progress(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.4f}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )


def _indices(method: Method, indices: torch.Tensor) -> dict:
    """The `indices` keyword for methods that keep per-image state (a memory bank), else nothing."""
    return {"indices": indices} if method.uses_indices else {}


def _channels_last(views):
    if isinstance(views, torch.Tensor):
        return views.contiguous(memory_format=torch.channels_last) if views.ndim == 4 else views
    if isinstance(views, (list, tuple)):
        return type(views)(_channels_last(v) for v in views)
    if isinstance(views, dict):
        return {k: _channels_last(v) for k, v in views.items()}
    return views
