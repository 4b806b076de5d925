"""The one training loop. It knows no method: a plugin makes views and returns a loss; the engine
owns the optimiser, schedule, precision, data order, checkpoints, resume, progress and metrics."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from ..backbones import BackboneInfo, check_backbone_name, create_backbone, load_weights_into
from ..data.images import Split, balanced_fraction
from ..data.sources import ClipSettings, DataSource, hear, open_source
from ..device import autocast, autocast_dtype, peak_memory_mb, select_device
from ..errors import UserError, last_line, plugin_fault, plugin_guard
from ..files import atomic_write, remove_stale_tmp
from ..methods.base import Method
from ..recipe import Recipe
from ..registry import get_method
from .checkpoints import (CHECKPOINT_FORMAT, check_resumable, checkpoint_bytes, existing_ancestor, kept_message,
                          load_checkpoint, megabytes, prune_kept, save_checkpoint, save_weights)
from .optim import build_optimizer, lr_factor
from .order import epoch_order, iterate_batches
from .views import channels_last, extras
from .records import log_record, plot, progress_bar, trim_metrics, visualize, write_skipped


class TrainingError(UserError):
    """The run itself failed (e.g. the loss diverged); exit code 1, last good checkpoint kept."""

    exit_code = 1


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a resumable checkpoint was written. Exit code 130."""


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
        self.resume_from: Optional[Path] = None  # a checkpoint to resume from instead of last.pt
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
        sound = method_cls.sound_plan(self.recipe)
        if sound is not None:
            ds = hear(ds, sound, method_cls.name)
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
        sound = type(method).sound_plan(self.recipe)
        buffers = {name: b.clone() for name, b in method.named_buffers()}
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast(self.device, self.dtype):
                method.eval()
                audio = torch.randn(2, shape[1], sound.samples, generator=gen, device=self.device) if sound else None
                method.training_step(method.batch_views(images, gen, labels, **extras(method, torch.arange(2), audio)))
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
        t = self.recipe.train
        kept = t.epochs // t.keep_every if t.keep_every else 0
        kept = min(kept, t.keep_last) if t.keep_last else kept
        kept -= len(list((self.out / "checkpoints").glob("epoch-*.pt")))  # a resumed run holds some already
        need = (2 + max(0, kept)) * checkpoint_bytes(self.method, self.recipe.optim.name) + 10_000_000 - held
        where = existing_ancestor(self.out)
        free = shutil.disk_usage(where).free
        if free < need:
            plan = f"a checkpoint, the previous one and {kept} kept epoch-N.pt" if kept > 0 else "a checkpoint and the previous one"
            raise UserError(
                f"--out '{self.out}' has {megabytes(free)} free, but this run needs about {megabytes(need)} "
                f"({plan}); free some space, choose another --out{' or set train.keep_last' if kept > 0 else ''}"
            )

    def _read_resume(self) -> Optional[dict]:
        """The checkpoint to continue from, checked against this recipe; None when the run was
        stopped before its first checkpoint (it then starts from the beginning)."""
        path = self.resume_from or self.out / "checkpoints" / "last.pt"
        if not path.exists() and self.resume_from is None and (self.out / "recipe.yaml").is_file():
            return None
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, self.recipe)
        return ckpt

    def _load_model_state(self, ckpt: dict) -> None:
        try:
            self.method.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as exc:
            raise UserError(f"checkpoint of '{self.out}' does not fit this recipe's model "
                            f"({str(exc).splitlines()[0][:200]}); resume with the run's own recipe.yaml") from None

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
            save_weights(method, info, start_epoch, self.out)
        elif resume:
            self.console.print("no checkpoint was written before the run stopped; starting from the beginning")
        self.resume_state = None  # the optimiser state now lives in the optimiser
        if resume:
            trim_metrics(self.out, global_step)
        atomic_write(self.out / "recipe.yaml", r.to_yaml().encode())
        write_skipped(self.out, self.data.bad if self.data is not None else None)

        def save(epoch: int, step_in_epoch: int) -> None:
            if not all(torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point()):
                raise TrainingError(
                    f"the weights became non-finite by epoch {epoch}, step {global_step}; {kept_message(ckpt_dir)}; "
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
            kept = step_in_epoch == 0 and r.train.keep_every and epoch % r.train.keep_every == 0
            save_checkpoint(state, ckpt_dir / "last.pt", *([ckpt_dir / f"epoch-{epoch}.pt"] if kept else []))
            if kept:
                prune_kept(ckpt_dir, r.train.keep_last)
            save_weights(method, info, epoch, self.out)

        metrics_file = open(self.out / "metrics.jsonl", "a")
        progress = progress_bar(self.console)
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
                    for step, batch in enumerate(batches, first):
                        images = batch.images
                        if ds.bad is not None and len(ds.bad) != bad_seen:
                            bad_seen = len(ds.bad)
                            write_skipped(self.out, self.data.bad if self.data is not None else None)
                        if images.shape[0] < 2:  # every image of this batch was undecodable
                            continue
                        t0 = time.time()
                        loss, metrics = self._step(method, batch, aug_gen, optimizer, scaler)
                        if not math.isfinite(loss):
                            raise TrainingError(
                                f"loss became {loss} at epoch {epoch + 1}, step {global_step + 1}; {kept_message(ckpt_dir)}; "
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
                            log_record(metrics_file, {"step": global_step, "epoch": epoch + (step + 1) / steps_per_epoch,
                                                     "loss": loss, "lr": lr, "images_per_s": ips, **metrics})
                        if self._stop_signal is not None and step + 1 < steps_per_epoch:
                            save(epoch, step + 1)
                            raise Interrupted(f"interrupted at epoch {epoch + 1}, step {global_step}; checkpoint saved")
                    elapsed = time.time() - epoch_start
                    record = {"epoch": epoch + 1, "step": global_step, **{k: v / counts[k] for k, v in sums.items()},
                              "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(1e-9, elapsed),
                              "epoch_seconds": elapsed, **self._epoch_metrics(method, ds)}
                    log_record(metrics_file, record)
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
                f"{kept_message(ckpt_dir)}: free some space, then continue with --resume"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                metrics_file.close()
                write_skipped(self.out, self.data.bad if self.data is not None else None)
            self.method = method
            plot(self.out, self.console)
        visualize(method, ds, self.device, self.out, self.console)
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

    def _step(self, method: Method, batch, gen, optimizer, scaler) -> tuple[float, dict[str, float]]:
        images = batch.images.to(self.device, non_blocking=True)
        audio = batch.audio.to(self.device, non_blocking=True) if batch.audio is not None else None
        views = method.batch_views(images, gen, batch.labels.to(self.device) if method.uses_labels else None,
                                   **extras(method, batch.indices.to(self.device), audio))
        if self.recipe.train.channels_last:
            views = channels_last(views)
        with autocast(self.device, self.dtype):
            loss, metrics = method.training_step(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach()), {k: float(v) for k, v in metrics.items()}

    def _workers(self, split: Split) -> int:
        w = self.recipe.data.workers
        if w != "auto":
            return int(w)
        return 0 if split.in_memory else min(4, max(1, (os.cpu_count() or 2) - 1))
