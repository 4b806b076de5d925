"""The one training loop. It knows no method: a plugin makes views and returns a loss; the engine
owns the optimiser, schedule, precision, data order, checkpoints, resume, progress and metrics."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from ..backbones import BackboneInfo, check_backbone_name
from ..data.images import Split
from ..data.sources import DataSource
from ..device import autocast, autocast_dtype, peak_memory_mb, select_device
from ..errors import UserError, plugin_guard
from ..files import atomic_write, remove_stale_tmp
from ..methods.base import Method
from ..recipe import Recipe
from ..registry import get_method
from .checkpoints import (CHECKPOINT_FORMAT, check_resumable, kept_message,
                          load_checkpoint, prune_kept, save_checkpoint, save_weights)
from .optim import build_optimizer, lr_factor
from . import ranks
from .setup import build_method, check_space, dry_step, open_data
from .order import epoch_order, iterate_batches
from .views import channels_last, method_batch
from .loggers import RunStart, run_loggers
from .tracking import check_trackers
from .records import trim_metrics, visualize, write_skipped


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
        self.dtype = autocast_dtype(recipe.train.precision, self.device)
        self._stop_signal: Optional[int] = None
        self.data: Optional[DataSource] = None
        self.method: Optional[Method] = None
        self.info: Optional[BackboneInfo] = None
        self.resume_from: Optional[Path] = None  # a checkpoint to resume from instead of last.pt
        self.resume_state: Optional[dict] = None

    # -- set-up
    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True, highlight=False)

    def prepare(self, resume: bool = False) -> DataSource:
        """Refuse now, before anything is written, whatever would fail later: the backbone name,
        the data (readable, decodable, labelled as the method needs, large enough for a batch),
        the method and backbone on this data (one dry step), free space for a checkpoint, and the
        checkpoint to resume."""
        if self.data is not None:
            return self.data
        ranks.check_batch(self.recipe.train.batch_size)
        if ranks.world_size() > 1 and not get_method(self.recipe.method.name).multi_process:
            raise UserError(f"method '{self.recipe.method.name}' does not train on several processes yet; run it in "
                            f"one process (without torchrun)")
        if resume:  # the checkpoint first: it is quicker to read than the data
            self.resume_state = self._read_resume()
        check_backbone_name(self.recipe.backbone.name)
        check_trackers(self.recipe.train.loggers)
        ds = open_data(self.recipe, self._warn)
        self.method, self.info = build_method(self.recipe, ds, self.device, self.dtype)
        with plugin_guard(self.recipe.method.name, "setup on the training data"):
            self.method.setup(ds.train)
        dry_step(self.recipe, self.method, ds, self.device, self.dtype)
        check_space(self.recipe, self.out, self.method)
        if self.resume_state is not None:
            self._load_model_state(self.resume_state)
        self.data = ds
        return ds

    def _restore(self, ckpt: dict, optimizer, scheduler, scaler, aug_gen) -> tuple[int, int, int]:
        """Load the training state of a checkpoint; (epoch, step in epoch, global step) to go on from."""
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        aug_gen.set_state(ckpt["rng"]["augment"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        self.console.print(f"resuming from epoch {ckpt['epoch']}, step {ckpt['global_step']}")
        if ranks.is_main():
            # a kill between writing last.pt and the backbone leaves the backbone a save behind, and a
            # run resumed at its very end trains no step that would write it again
            save_weights(self.method, self.info, ckpt["epoch"], self.out)
        return ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]

    def _read_resume(self) -> Optional[dict]:
        """The checkpoint to continue from, checked against this recipe; None when the run was
        stopped before its first checkpoint (it then starts from the beginning)."""
        path = self.resume_from or self.out / "checkpoints" / "last.pt"
        if not path.exists() and self.resume_from is None and (self.out / "recipe.yaml").is_file():
            return None
        ckpt = load_checkpoint(path)
        check_resumable(ckpt, self.recipe)
        wrote, now = ckpt.get("world_size", 1), ranks.world_size()
        if wrote != now:  # per-rank state (SwAV's queues, norm statistics) would not carry over exactly
            how = "in one process" if wrote == 1 else f"with torchrun --nproc-per-node {wrote} (or {wrote} processes in all)"
            raise UserError(f"the checkpoint '{path}' was written by {wrote} process(es) and this run has {now}; "
                            f"resume it {how}")
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
            if ranks.world_size() > 1:  # the launcher SIGTERMs the ranks left when one exits: let them finish
                signal.signal(signal.SIGTERM, signal.SIG_IGN)

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
        main = ranks.is_main()  # rank 0 alone writes the run folder
        if main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_tmp(ckpt_dir)
            remove_stale_tmp(self.out)
        start_epoch, start_step, global_step = 0, 0, 0
        ckpt = self.resume_state
        if ckpt is not None:
            start_epoch, start_step, global_step = self._restore(ckpt, optimizer, scheduler, scaler, aug_gen)
        elif resume:
            self.console.print("no checkpoint was written before the run stopped; starting from the beginning")
        self.resume_state = None  # the optimiser state now lives in the optimiser
        if main:
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
                "world_size": ranks.world_size(),
                "rng": {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()},
            }
            if self.device.type == "cuda":
                state["rng"]["cuda"] = torch.cuda.get_rng_state()
            kept = step_in_epoch == 0 and r.train.keep_every and epoch % r.train.keep_every == 0
            if main:
                save_checkpoint(state, ckpt_dir / "last.pt", *([ckpt_dir / f"epoch-{epoch}.pt"] if kept else []))
                if kept:
                    prune_kept(ckpt_dir, r.train.keep_last)
                save_weights(method, info, epoch, self.out)
            ranks.barrier()  # no rank leaves (and has the launcher stop the others) while rank 0 writes

        loggers = run_loggers(self.out, self.console, main, r)
        history: list[dict] = []
        ok = False
        started = time.time()
        bad_seen = len(ds.bad or ())
        try:
            for logger in loggers:
                logger.start(RunStart(r.method.name, total_steps, global_step, r.train.epochs, r.train.log_every))
            with self._catch_signals():
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
                            if main:
                                write_skipped(self.out, self.data.bad if self.data is not None else None)
                        if ranks.even(images.shape[0]) < 2 * ranks.world_size():  # every image was undecodable
                            continue
                        t0 = time.time()
                        loss, metrics = self._step(method, batch, aug_gen, optimizer, scaler)
                        loss, metrics = ranks.agree(loss, metrics)
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
                        ips = images.shape[0] / max(1e-9, time.time() - t0)
                        record = {"step": global_step, "epoch": epoch + (step + 1) / steps_per_epoch, "loss": loss,
                                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": ips, **metrics}
                        for logger in loggers:
                            logger.log_step(record)
                        # every rank acts on the agreed flag, never on its own: a signal may reach one rank alone
                        stop = ranks.any_rank(self._stop_signal is not None)
                        if stop and step + 1 < steps_per_epoch:
                            save(epoch, step + 1)
                            raise Interrupted(f"interrupted at epoch {epoch + 1}, step {global_step}; checkpoint saved")
                    elapsed = time.time() - epoch_start
                    record = {"epoch": epoch + 1, "step": global_step, **{k: v / counts[k] for k, v in sums.items()},
                              "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / max(1e-9, elapsed),
                              "epoch_seconds": elapsed, **self._epoch_metrics(method, ds)}
                    history.append(record)
                    warning = method.epoch_warning(record)
                    for logger in loggers:
                        logger.log_epoch(record, warning)
                    stop = ranks.any_rank(self._stop_signal is not None)
                    if (epoch + 1) % r.train.checkpoint_every == 0 or epoch + 1 == r.train.epochs or stop:
                        save(epoch + 1, 0)
                    if stop and epoch + 1 < r.train.epochs:
                        raise Interrupted(f"interrupted after epoch {epoch + 1}, step {global_step}; checkpoint saved")
            if main:  # before the loggers close, so the trackers receive the picture
                visualize(method, ds, self.device, self.out, self.console)
            ok = True
        except OSError as exc:  # a full disk, a lost mount: the previous checkpoint is still whole
            raise TrainingError(
                f"writing to '{exc.filename or self.out}' failed ({exc.strerror or exc}) at step {global_step}; "
                f"{kept_message(ckpt_dir)}: free some space, then continue with --resume"
            ) from None
        finally:
            for logger in loggers:
                logger.close(ok)
            with contextlib.suppress(OSError):
                if main:
                    write_skipped(self.out, self.data.bad if self.data is not None else None)
            self.method = method
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
        """One optimiser step on a global batch: every rank makes the batch's views, trains on its
        share, and the gradients are averaged over the ranks."""
        n = ranks.even(batch.images.shape[0])
        images = batch.images[:n].to(self.device, non_blocking=True)
        audio = batch.audio[:n] if batch.audio is not None else None
        views = method.batch_views(method_batch(method, images, batch.indices[:n], batch.labels[:n], audio), gen)
        if ranks.world_size() > 1:
            views = method.shard_views(views, n)
        if self.recipe.train.channels_last:
            views = channels_last(views)
        with autocast(self.device, self.dtype):
            loss, metrics = method.training_step(views)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        ranks.average_gradients(method)
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach()), {k: float(v) for k, v in metrics.items()}

    def _workers(self, split: Split) -> int:
        w = self.recipe.data.workers
        if w != "auto":
            return int(w)
        return 0 if split.in_memory else min(4, max(1, (os.cpu_count() or 2) - 1))
